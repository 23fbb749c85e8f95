"""Every way a model leaves the package: TorchScript, FX, torch.export (dynamic H and W for ViTs), ONNX run in
onnxruntime, and timm's factory arguments (meta device, dtype, to_empty + init_weights, feature_cfg)."""
import pytest
import timm
import torch
from torch.export import Dim

import timm_pe  # noqa: F401  (registers the models)
from timm_pe.layers import ATTENTION_ENCODINGS
from timm_pe.models.swin import ATTN_POS as SWIN_ENCODINGS
from timm_pe.models.vit import VARIANTS

from tests.helpers import unit_scale_attention

VIT_ENCODINGS = list(VARIANTS)
SIZES = [(64, 64), (48, 80), (96, 32)]  # one exported program serves all three


def tiny_vit(enc, **kwargs):
    torch.manual_seed(0)
    return unit_scale_attention(timm.create_model(f'vit_tiny_{enc}', embed_dim=32, num_heads=2, depth=2, img_size=64,
                                                  num_classes=5, **kwargs)).eval()


def tiny_swin(enc, **kwargs):
    torch.manual_seed(0)
    return unit_scale_attention(timm.create_model(f'swin_tiny_{enc}', embed_dim=16, depths=(1, 1, 1, 1),
                                                  num_heads=(1, 1, 2, 2), img_size=128, num_classes=5, **kwargs)).eval()


def dynamic_hw(batch=True):
    shapes = {2: 16 * Dim('h', min=1, max=16), 3: 16 * Dim('w', min=1, max=16)}
    if batch:
        shapes[0] = Dim('batch', min=1, max=8)
    return {'x': shapes}


@pytest.mark.parametrize('family,enc', [('vit', e) for e in VIT_ENCODINGS] + [('swin', e) for e in SWIN_ENCODINGS])
def test_torchscript_matches_eager(family, enc):
    with timm.layers.set_scriptable(True):
        model = tiny_vit(enc) if family == 'vit' else tiny_swin(enc)
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 128, 128) if family == 'swin' else torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('enc', ['sincos', 'rope_mixed', 'alibi2d', 'rpb'])
def test_fx_symbolic_trace_without_concrete_args(enc):
    model = tiny_vit(enc)
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))
    traced.train()
    traced(x).sum().backward()
    assert all(p.grad is not None for p in traced.parameters())
    mask = torch.zeros(2, 1, 17, 17)
    mask[..., 1:3] = float('-inf')
    with torch.no_grad():
        torch.testing.assert_close(traced(x, mask), model(x, mask))


@pytest.mark.parametrize('name', ['vit_tiny_rope_axial', 'swin_tiny_rope_mixed'])
def test_features_only_fx(name):
    kwargs = dict(depth=2, embed_dim=32, num_heads=2, img_size=64, out_indices=(0, 1)) if name.startswith('vit') \
        else dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), img_size=128)
    torch.manual_seed(0)
    fx = timm.create_model(name, features_only=True, feature_cls='fx', **kwargs).eval()
    torch.manual_seed(0)
    hook = timm.create_model(name, features_only=True, feature_cfg=dict(feature_cls='hook'), **kwargs).eval()
    x = torch.randn(1, 3, 64 if name.startswith('vit') else 128, 64 if name.startswith('vit') else 128)
    with torch.no_grad():
        for a, b in zip(fx(x), hook(x)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize('enc', VIT_ENCODINGS)
def test_export_vit_with_dynamic_height_and_width(enc):
    model = tiny_vit(enc, dynamic_img_size=True)
    program = torch.export.export(model, (torch.randn(2, 3, 64, 64),), dynamic_shapes=dynamic_hw())
    for size in SIZES:
        x = torch.randn(3, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('enc', ['rope_axial', 'rope_mixed'])
@pytest.mark.parametrize('rope_scaling', ['interp', 'ntk'])
def test_export_with_rope_scaling_keeps_sizes_dynamic(enc, rope_scaling):
    """The hooks' factors depend on the grid (NTK's on whether it grew): still one program for all sizes."""
    model = tiny_vit(enc, dynamic_img_size=True, rope_scaling=rope_scaling)
    program = torch.export.export(model, (torch.randn(2, 3, 64, 64),), dynamic_shapes=dynamic_hw())
    for size in SIZES + [(128, 96)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('enc', SWIN_ENCODINGS)
def test_export_swin_at_static_size(enc):
    model = tiny_swin(enc)
    x = torch.randn(2, 3, 128, 128)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-5)


def run_onnx(model, x, dynamic_shapes, tmp_path, inputs):
    ort = pytest.importorskip('onnxruntime')
    pytest.importorskip('onnxscript')
    path = tmp_path / 'model.onnx'
    torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False).save(path)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    for x in inputs:
        with torch.no_grad():
            expected = model(x)
        torch.testing.assert_close(torch.from_numpy(session.run(None, {name: x.numpy()})[0]), expected,
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('enc', ['sincos', 'ape'] + list(ATTENTION_ENCODINGS))
def test_onnx_vit_with_dynamic_height_and_width(enc, tmp_path):
    model = tiny_vit(enc, dynamic_img_size=True)
    run_onnx(model, torch.randn(2, 3, 64, 64), dynamic_hw(), tmp_path, [torch.randn(1, 3, *s) for s in SIZES])


@pytest.mark.parametrize('enc', SWIN_ENCODINGS)
def test_onnx_swin(enc, tmp_path):
    model = tiny_swin(enc)
    run_onnx(model, torch.randn(1, 3, 128, 128), None, tmp_path, [torch.randn(1, 3, 128, 128)])


@pytest.mark.parametrize('name', ['vit_tiny_rope_axial', 'vit_tiny_rope_mixed', 'swin_tiny_rope_mixed'])
def test_meta_device_forward_and_backward(name):
    """Shape inference on the meta device runs a training step too (learning tables included), as timm's own
    tests do: nothing asks a meta tensor for a value."""
    kwargs = dict(depth=1) if name.startswith('vit') else dict(depths=(1, 1, 1, 1))
    model = timm.create_model(name, device='meta', **kwargs).train()
    out = model(torch.randn(2, 3, 224, 224, device='meta'))
    out.sum().backward()
    assert out.shape == (2, 1000) and all(p.grad is not None and p.grad.device.type == 'meta'
                                          for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize('name', ['vit_tiny_rope_mixed', 'vit_tiny_rpb', 'swin_tiny_rope_mixed', 'swin_tiny_rpb'])
def test_meta_device_then_to_empty_and_init_weights(name):
    kwargs = dict(depth=2) if name.startswith('vit') else dict(depths=(1, 1, 1, 1))
    model = timm.create_model(name, device='meta', dtype=torch.float64, **kwargs)
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {'meta'}
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    model = model.to_empty(device='cpu')
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float('nan'))
    model.init_weights()
    timm.models._manipulate.reinit_non_persistent_buffers(model)
    assert all(torch.isfinite(t).all() for t in [*model.parameters(), *model.buffers()] if t.is_floating_point())
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    assert torch.isfinite(model.eval()(x)).all()
    model.reset_classifier(3)
    head = model.get_classifier()
    assert head.weight.dtype == torch.float64 and head.weight.device.type == 'cpu'
