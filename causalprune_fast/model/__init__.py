"""Layer 2, knowledge of the model: which layers are measured (``discovery.py``,
``layers.py``), where their responses are (``response.py``), attention and model families
(``attention.py``, ``families.py``), and the channel groups from Torch-Pruning's dependency
graph (``channel_members.py``, ``channel_graph.py``, ``llm_graph.py``)."""
