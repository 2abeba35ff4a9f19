"""Layer 0, the base: what every layer above may use and that imports nothing else of the
package: argument checks, a model's snapshot, seeded noise, a model's output tensors, a
convolution's geometry, and the torch.distributed context."""
