"""LoRA weight amplification: scaled adapters load in PEFT through the project's loader and
change the logits exactly as base + factor·ΔW; factor 1 is the finetune, factor 0 the base."""

from __future__ import annotations

import json

import pytest
import torch

from difflens.cli import main
from difflens.methods.amplify.lora import ScaleSpec, export_scaled, parse_spec
from difflens.models.pair import BASE, FT, ModelPair

pytestmark = pytest.mark.usefixtures("one_thread")
TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_dir):
    from peft import LoraConfig, get_peft_model

    from difflens.models.loading import LoadOptions, load_causal_lm

    torch.manual_seed(0)
    model, _ = load_causal_lm(tiny_dir, LoadOptions())
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                            target_modules=TARGETS))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("lora") / "adapter"
    lora.save_pretrained(path)
    return path


IDS = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46], [1, 90, 91, 92, 93, 94, 95, 96]])


def logits(pair: ModelPair, side: str = FT) -> torch.Tensor:
    with pair.use(side) as (model, _), torch.inference_mode():
        return model(input_ids=IDS).logits


def merged_reference(tiny_dir, adapter, spec: ScaleSpec) -> torch.Tensor:
    """The base with every targeted weight replaced by W + factor · (α/r) · B A, by hand."""
    from safetensors.torch import load_file

    from difflens.models.loading import LoadOptions, load_causal_lm

    model, _ = load_causal_lm(tiny_dir, LoadOptions())
    config = json.loads((adapter / "adapter_config.json").read_text())
    s = config["lora_alpha"] / config["r"]
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    modules = dict(model.named_modules())
    n = 0
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        b = tensors[key.replace("lora_A", "lora_B")]
        name = key.removeprefix("base_model.model.").split(".lora_A")[0]
        layer = int(name.split(".layers.")[1].split(".")[0])
        factor = spec.factor(layer, name.rsplit(".", 1)[1])
        with torch.no_grad():
            modules[name].weight += factor * s * (b.float() @ a.float())
        n += 1
    assert n == 4 * len(TARGETS)
    with torch.inference_mode():
        return model(input_ids=IDS).logits


def test_factor_one_is_the_finetune_and_zero_the_base(tmp_path, tiny_dir, adapter):
    original = ModelPair.load(tiny_dir, adapter)
    ones = ModelPair.load(tiny_dir, export_scaled(adapter, tmp_path / "one", ScaleSpec()))
    zero = ModelPair.load(tiny_dir, export_scaled(adapter, tmp_path / "zero", ScaleSpec(0.0)))
    assert torch.equal(logits(ones), logits(original))
    assert torch.equal(logits(zero), logits(original, BASE))
    assert not torch.equal(logits(original), logits(original, BASE))


@pytest.mark.parametrize("flags", [
    {"scale": 2.0},
    {"scale": -1.0},
    {"scale": 1.0, "layers": "0-1:3,3:0.5", "modules": "o_proj:0,down_proj:2.5"},
])
def test_scaled_adapter_is_base_plus_factor_times_delta(tmp_path, tiny_dir, adapter, flags):
    spec = parse_spec(**flags)
    out = export_scaled(adapter, tmp_path / "scaled", spec)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "amplification.json"]
    scaled = ModelPair.load(tiny_dir, out)  # the project's loader: PEFT reads it as-is
    expected = merged_reference(tiny_dir, adapter, spec)
    assert torch.allclose(logits(scaled), expected, atol=1e-5)
    record = json.loads((out / "amplification.json").read_text())
    assert record["spec"] == spec.to_dict()
    if "modules" in flags:
        assert record["factors"]["o_proj"]["2"] == 0.0
        assert record["factors"]["down_proj"]["0"] == 3.0 * 2.5
        assert record["factors"]["q_proj"]["2"] == 1.0


def test_cli_export_and_its_bad_input(tmp_path, tiny_dir, adapter, capsys):
    out = tmp_path / "amp-adapter"
    base = ["amplify", "--base", str(tiny_dir), "--finetuned", str(adapter)]
    assert main([*base, "--export", str(out), "--scale", "2", "--scale-modules", "o_proj:0"]) == 0
    assert "scaled LoRA adapter written" in capsys.readouterr().out
    assert (out / "adapter_model.safetensors").exists()
    cases = [
        (["--export", str(tmp_path / "x"), "--scale-modules", "gate_proj:2"],
         "does not target gate_proj; it targets down_proj, o_proj, q_proj, v_proj"),
        (["--export", str(tmp_path / "x"), "--scale-layers", "0-9:2"],
         "outside the adapter's layers (0-3)"),
        (["--export", str(tmp_path / "x"), "--scale-layers", "0-2:2,2-3:1"], "overlap"),
        (["--export", str(tmp_path / "x"), "--scale-layers", "two:2"], "FIRST-LAST:FACTOR"),
        (["--export", str(tmp_path / "x"), "--scale-modules", "o_proj:nan"], "finite"),
        (["--export", str(tmp_path / "x"), "--scale", "inf"], "finite"),
        (["--export", str(out), "--scale", "3"], "already exists and is not empty"),
    ]
    for flags, needle in cases:
        assert main([*base, *flags]) == 2, flags
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("difflens: error: "), err
        assert needle in err[0], (needle, err)
        assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # nothing half-written


def test_full_model_finetune_is_refused(tmp_path, tiny_dir, tiny_ft_dir, capsys):
    assert main(["amplify", "--finetuned", str(tiny_ft_dir), "--export",
                 str(tmp_path / "x"), "--scale", "2"]) == 2
    assert "not a PEFT (LoRA) adapter" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
