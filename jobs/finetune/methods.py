"""Fine-tuning methods (spec.method) applied to an encoder: full, LoRA, AdaLoRA or prefix tuning
through peft, and what each implies for the rest of the job (token types, frozen poolers, adapters).
"""

from __future__ import annotations

from typing import Any, TypeAlias

from peft import AdaLoraConfig, LoraConfig, PeftModel, PrefixTuningConfig, TaskType, get_peft_model
from torch import nn

from sampleforge.api.finetune import AdaLoraMethod, FullMethod, LoraMethod, PrefixTuningMethod

MethodSpec: TypeAlias = FullMethod | LoraMethod | AdaLoraMethod | PrefixTuningMethod


def freeze_unused_pooler(encoder: nn.Module) -> None:
    """BERT-style encoders carry a pooler no head here uses; freeze it so that DDP does not wait for
    gradients that never come (and AdamW does not decay weights nobody trains)."""
    pooler = getattr(encoder, "pooler", None)
    if isinstance(pooler, nn.Module):
        pooler.requires_grad_(False)


def apply_method(encoder: nn.Module, method: MethodSpec, total_steps: int) -> nn.Module:
    """Wrap ``encoder`` for the fine-tuning method in spec.method (full: unchanged)."""
    if isinstance(method, FullMethod):
        return encoder
    config: Any
    if isinstance(method, LoraMethod | AdaLoraMethod):
        # Empty target_modules: peft's usual choice for the model type (query and value for BERT).
        targets = list(method.target_modules) or None
    # peft annotates lora_alpha as int, but only divides by it (scaling = lora_alpha / r): the spec's float is right.
    if isinstance(method, LoraMethod):
        config = LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=method.rank,
                            lora_alpha=method.alpha,  # type: ignore[arg-type]  # see above
                            lora_dropout=method.dropout, target_modules=targets)
    elif isinstance(method, AdaLoraMethod):
        # AdaLoRA's budget schedule: full rank for the first 10 % of steps, final rank for the last 20 %.
        steps = max(total_steps, 10)
        config = AdaLoraConfig(task_type=TaskType.FEATURE_EXTRACTION, init_r=method.initial_rank,
                               target_r=method.rank, lora_alpha=method.alpha,  # type: ignore[arg-type]  # see above
                               lora_dropout=method.dropout,
                               target_modules=targets, total_step=steps, tinit=steps // 10,
                               tfinal=steps // 5)
    else:
        config = PrefixTuningConfig(task_type=TaskType.FEATURE_EXTRACTION,
                                    num_virtual_tokens=method.num_virtual_tokens,
                                    prefix_projection=method.projection)
    wrapped: nn.Module = get_peft_model(encoder, config)
    return wrapped


def uses_token_types(method: MethodSpec) -> bool:
    """peft's prefix tuning drops token_type_ids (with a warning per call); do not send them."""
    return not isinstance(method, PrefixTuningMethod)


def is_adapter(encoder: nn.Module) -> bool:
    return isinstance(encoder, PeftModel)


def load_config_hidden(encoder: nn.Module) -> Any:
    """The transformers config of an encoder, through a peft wrapper if there is one."""
    base = encoder.get_base_model() if isinstance(encoder, PeftModel) else encoder
    return base.config
