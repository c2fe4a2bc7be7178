//! Model hub downloads (placeholder while written).
