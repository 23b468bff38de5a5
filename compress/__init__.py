"""Plan -> pruned / distilled / exported model. Owns model loading, criteria, family adapters, surgery."""
from ._names import Registry
from ._inputs import boolean, check_apart, check_parent, number, parse_json, read_json, read_yaml
from ._families import FamilyAdapter, family_of, register_family, supported_families
from ._shapes import LayerShape, ModelShapes, shapes_from_config
from ._plan import LayerPlan, Plan
from ._criteria import CRITERIA, Criterion, get_criterion
from ._data import check_source, predictable_documents, texts, token_blocks
from ._models import (DEFAULT_MODEL, MODELS, ModelSpec, accelerator, load_on_device, check_checkpoint, check_dtype, load_config, load_model,
                      load_tokenizer_of, local_model_dir, resolve_model)
from ._rankings import Rankings, calibration_tokens, compute_rankings, resolved_calibration
from ._reconstruct import check_gram_memory, gram_bytes
from ._prune import PruneResult, prune
from ._io import check_output_dir, check_remote_code, read_plan_record, save_pruned
from ._outliers import layer_outlier_ratios
from ._distill import (DistillSchedule, available_memory, check_fits, distill, estimate_for_shapes,
                       estimate_training_memory, teacher_dtype)
from ._distill_cli import run_distill
from ._export import FORMATS, export_hf, export_model
from ._export_gguf import export_gguf
from ._arch import Arch, build_scratch_model
from ._tokenizer import load_tokenizer, train_tokenizer
from ._scratch import ScratchSchedule, train_scratch

__all__ = [
    "Registry", "boolean", "check_apart", "check_parent", "number", "parse_json", "read_json", "read_yaml",
    "FamilyAdapter", "family_of", "register_family", "supported_families",
    "LayerShape", "ModelShapes", "shapes_from_config", "LayerPlan", "Plan",
    "CRITERIA", "Criterion", "get_criterion", "check_source", "texts", "token_blocks", "predictable_documents",
    "DEFAULT_MODEL", "MODELS", "ModelSpec", "accelerator", "load_on_device", "check_checkpoint", "check_dtype", "load_config", "load_model", "load_tokenizer_of", "local_model_dir", "resolve_model",
    "Rankings", "compute_rankings", "check_gram_memory", "gram_bytes", "PruneResult", "calibration_tokens", "resolved_calibration", "prune", "check_output_dir", "check_remote_code", "read_plan_record",
    "save_pruned",
    "layer_outlier_ratios", "DistillSchedule", "available_memory", "check_fits", "distill", "estimate_for_shapes",
    "estimate_training_memory", "teacher_dtype", "run_distill",
    "FORMATS", "export_hf", "export_model", "export_gguf",
    "Arch", "build_scratch_model", "load_tokenizer", "train_tokenizer", "ScratchSchedule", "train_scratch",
]
