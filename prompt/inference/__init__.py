from prompt.inference.decoding import Decoder, GenerationResult
from prompt.inference.tree import DynamicTree, TreeBuffers, build_tree_buffers, load_tree_specs, select_tree_spec
from prompt.inference import upstream_generate  # noqa: F401 (installs upstream's PromptDecoder.ppd_generate)
from prompt.model.stops import stop_token_ids_for

__all__ = ["Decoder", "GenerationResult", "stop_token_ids_for", "DynamicTree", "TreeBuffers",
           "build_tree_buffers", "load_tree_specs", "select_tree_spec"]
