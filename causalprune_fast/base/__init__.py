"""Layer 0, the base: what every layer above may use and that imports nothing else of the
package: argument checks (``validation.py``), the memory budget (``memory.py``), a model's
snapshot (``model_state.py``), seeded noise (``noise.py``), a model's output tensors
(``outputs.py``), a convolution's geometry (``conv_geometry.py``), and the torch.distributed
context (``distributed.py``)."""
