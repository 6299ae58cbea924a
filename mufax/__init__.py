"""mufax: a JAX/Flax machine-unlearning benchmark for face recognition models."""
