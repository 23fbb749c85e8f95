"""Pretrained weights through an offline Hugging Face cache: export and reload (by tag, by ``hf-hub:``, at
another size, with another head), timm peer weights converted on load, key checks, the uploader against a
recording stand-in for the Hub API, and the committed model cards."""
import copy
import importlib.util
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import generate_default_cfgs, get_pretrained_cfg
from timm.models._input import get_model_args

import timm_pe.publish
from timm_pe.tools.cli import main as cli_main
from timm_pe.publish import export, push, registered_models
from timm_pe.models import _pretrained
from timm_pe.models._pretrained import HUB_ORG, VIT_IN1K, imagenet100_wnids, pretrained_cfgs

REPO = Path(__file__).resolve().parent.parent
REVISION = '0123456789abcdef0123456789abcdef01234567'
SAFE = 'model.safetensors'
VIT_NARROW = dict(depth=2, embed_dim=96)  # 6 heads of 16 dims
SWIN_NARROW = dict(depths=(1, 1, 1, 1), embed_dim=32, num_heads=(1, 2, 4, 8))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """Offline Hub whose cache is a temp dir; ``add(repo_id, {name: file})`` stores a snapshot as
    ``hf_hub_download`` finds it (``models--org--name/snapshots/<rev>/`` and ``refs/main``)."""
    cache = tmp_path / 'hf_cache'
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(cache))

    def add(repo_id: str, files: dict):
        repo = cache / f'models--{repo_id.replace("/", "--")}'
        (repo / 'snapshots' / REVISION).mkdir(parents=True)
        (repo / 'refs').mkdir()
        (repo / 'refs' / 'main').write_text(REVISION)
        for name, path in files.items():
            shutil.copy(path, repo / 'snapshots' / REVISION / name)

    return add


def exported_files(folder: Path) -> dict:
    return {name: folder / name for name in ('config.json', SAFE)}


def logits(model, size=224, features=False):
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model = model.eval()
        return model.forward_features(x) if features else model(x)


def test_export_reloads_by_hub_id_tag_size_and_head(tmp_path, hub_cache):
    model = timm.create_model('vit_tiny_rope_mixed', depth=2)
    folder = export(model, tmp_path / 'export', repo_id='someone/tiny-rope')
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', SAFE]
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'vit_tiny_rope_mixed' and config['model_args']['depth'] == 2
    assert config['pretrained_cfg']['hf_hub_filename'] == SAFE
    hub_cache('someone/tiny-rope', exported_files(folder))

    by_repo = timm.create_model('hf-hub:someone/tiny-rope', pretrained=True)
    by_tag = timm.create_model('vit_tiny_rope_mixed', pretrained=True, depth=2,
                               pretrained_cfg_overlay=dict(hf_hub_id='someone/tiny-rope', hf_hub_filename=SAFE))
    assert torch.equal(logits(by_repo), logits(model)) and torch.equal(logits(by_tag), logits(model))

    # at 320 px, 'interp' squeezes positions onto the 224 px training grid taken from the pretrained cfg
    at_320 = timm.create_model('hf-hub:someone/tiny-rope', pretrained=True, img_size=320, rope_scaling='interp')
    reference = timm.create_model('vit_tiny_rope_mixed', depth=2, img_size=320, rope_scaling='interp',
                                  rope_train_img_size=224)
    reference.load_state_dict(model.state_dict())
    assert at_320.blocks[0].attn.pos_enc.train_grid == (14, 14)
    assert torch.allclose(logits(at_320, 320), logits(reference, 320), atol=1e-5)
    assert get_model_args(at_320)['rope_train_img_size'] == (224, 224)  # an export of it keeps the grid

    ten_classes = timm.create_model('hf-hub:someone/tiny-rope', pretrained=True, num_classes=10)
    assert ten_classes.head.out_features == 10
    assert torch.equal(logits(ten_classes, features=True), logits(model, features=True))


def test_ape_checkpoint_loads_at_another_size(tmp_path, hub_cache):
    model = timm.create_model('vit_tiny_ape', depth=2)
    hub_cache('someone/tiny-ape', exported_files(export(model, tmp_path / 'export')))
    at_320 = timm.create_model('hf-hub:someone/tiny-ape', pretrained=True, img_size=320)
    resized = copy.deepcopy(model)
    resized.set_input_size(img_size=320)
    assert torch.allclose(logits(at_320, 320), logits(resized, 320), atol=1e-5)


def test_in100_tag_is_not_listed_or_loaded_before_upload_then_loads_its_hub_repo(tmp_path, hub_cache):
    name = 'vit_small_rope_mixed.in100'
    trained = timm.create_model(name, **VIT_NARROW)
    hub_cache(f'{HUB_ORG}/{name}', exported_files(export(trained, tmp_path / 'export', name)))
    assert name not in timm.list_pretrained() and name in timm_pe.publish.registered_tags()
    with pytest.raises(ValueError, match='vit_small_rope_mixed.in100 has no weights to load'):
        timm.create_model(name, pretrained=True, **VIT_NARROW)
    uploaded = dict(hf_hub_id=f'{HUB_ORG}/{name}', hf_hub_filename=SAFE)  # what IN100_UPLOADED adds
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=uploaded, **VIT_NARROW)
    assert loaded.num_classes == 100 and tuple(loaded.pretrained_cfg['label_names']) == imagenet100_wnids()
    assert torch.equal(logits(loaded), logits(trained))


def randomized(model):
    """Random values for what timm initialises to constants (biases, layer scale, tables, APE)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim <= 1 or 'table' in name or 'pos_embed' in name:
                p.add_(torch.randn_like(p) * .1)
    return model.eval()


PEERS = [
    ('vit_small_patch16_rope_mixed_224', 'vit_small_rope_mixed', VIT_NARROW),
    ('vit_small_patch16_rope_ape_224', 'vit_small_rope_axial_ape', VIT_NARROW),
    ('deit3_small_patch16_224', 'vit_small_ape', VIT_NARROW),
    ('swin_tiny_patch4_window7_224', 'swin_tiny_rpb', SWIN_NARROW),
]


@pytest.mark.parametrize('peer,ours,kwargs', PEERS)
def test_default_tag_converts_timm_peer_weights(tmp_path, hub_cache, peer, ours, kwargs):
    cfg = get_pretrained_cfg(ours)
    assert cfg.hf_hub_id.startswith(f'timm/{peer}.') and cfg.hf_hub_filename == SAFE
    reference = randomized(timm.create_model(peer, **kwargs))
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / SAFE)
    hub_cache(cfg.hf_hub_id, {SAFE: tmp_path / SAFE})

    model = timm.create_model(ours, pretrained=True, **kwargs)
    assert torch.allclose(logits(model), logits(reference), atol=1e-4)
    rope = dict(rope_scaling='interp') if 'rope' in ours else {}
    at_384 = timm.create_model(ours, pretrained=True, img_size=384, **rope, **kwargs)
    assert torch.isfinite(logits(at_384, 384)).all()
    if rope:
        assert at_384.blocks[0].attn.pos_enc.train_grid == (14, 14)


def test_checkpoint_keys_that_do_not_fit_are_named(tmp_path, hub_cache):
    state = timm.create_model('vit_tiny_rope_axial', depth=1).state_dict()
    del state['blocks.0.mlp.fc1.weight']
    state['blocks.0.attn.extra'] = torch.zeros(1)
    save_file(state, tmp_path / SAFE)
    hub_cache('someone/broken', {SAFE: tmp_path / SAFE})
    overlay = dict(hf_hub_id='someone/broken', hf_hub_filename=SAFE)
    for num_classes in (1000, 10):  # 10: timm loads non-strictly to replace the head
        with pytest.raises(RuntimeError, match=r"missing keys \['blocks\.0\.mlp\.fc1\.weight'\], "
                                               r"unexpected keys \['blocks\.0\.attn\.extra'\]"):
            timm.create_model('vit_tiny_rope_axial', pretrained=True, depth=1, num_classes=num_classes,
                              pretrained_cfg_overlay=overlay)


def test_tags_default_to_published_weights_and_load_safetensors_only():
    names = registered_models(pretrained=True)
    for name in names:
        cfg = get_pretrained_cfg(name)
        assert cfg.hf_hub_filename == SAFE and not cfg.url, name
    assert not {n for n in names if n.endswith('.in100')}  # none uploaded yet: none listed as if it were
    in100 = {n for n in timm_pe.publish.registered_tags() if n.endswith('.in100')}
    assert in100 == {f'vit_small_{e}.in100' for e in ('ape', 'nope', 'rope_axial', 'rope_mixed', 'alibi2d', 'rpb')}
    for name in in100:
        cfg = get_pretrained_cfg(name)
        assert not cfg.has_weights and cfg.num_classes == 100
        assert list(cfg.label_names) == sorted(cfg.label_names) and len(set(cfg.label_names)) == 100
    defaults = {arch: get_pretrained_cfg(arch).tag for arch in
                ('vit_small_rope_mixed', 'vit_base_rope_axial_ape', 'vit_small_ape', 'swin_base_rpb', 'vit_small_alibi2d')}
    assert defaults == {'vit_small_rope_mixed': 'naver_in1k', 'vit_base_rope_axial_ape': 'naver_in1k',
                        'vit_small_ape': 'fb_in1k', 'swin_base_rpb': 'ms_in1k', 'vit_small_alibi2d': None}
    with pytest.raises(ValueError, match='no weights to load'):  # .in100 not uploaded: never the default
        timm.create_model('vit_small_alibi2d', pretrained=True, depth=1)


def test_uploaded_in100_weights_become_the_default_only_without_in1k_weights(monkeypatch):
    monkeypatch.setattr(_pretrained, 'IN100_UPLOADED', frozenset({'uploaded', 'converted'}))
    cfgs = generate_default_cfgs({
        **pretrained_cfgs('uploaded', {}, in100=True),
        **pretrained_cfgs('pending', {}, in100=True),
        **pretrained_cfgs('converted', {}, in1k=VIT_IN1K['vit_small_rope_mixed'], in100=True),
    })
    assert {arch: cfg.tags[0] for arch, cfg in cfgs.items()} == dict(uploaded='in100', pending='', converted='naver_in1k')


class RecordingHubApi:
    """Stands in for huggingface_hub.HfApi, recording what it is asked to do."""
    calls = []

    def __init__(self, **kwargs):
        self.calls.append(('init', kwargs))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(('create_repo', repo_id, kwargs))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, **kwargs):
        self.calls.append(('upload_folder', kwargs))
        return SimpleNamespace(commit_url=f'https://huggingface.co/{kwargs["repo_id"]}/commit/1')


def test_cli_export_with_checkpoint_and_metrics_then_push(tmp_path, monkeypatch):
    model = timm.create_model('vit_tiny_ape', depth=1, img_size=112, num_classes=10)  # as trained by train.py
    save_file(model.state_dict(), tmp_path / 'trained.safetensors')
    (tmp_path / 'results.csv').write_text('model,img_size,top1,top5\nvit_tiny_ape,288,57.14,80.1\n'
                                          'vit_tiny_ape,224,55.48,79.0\nvit_tiny_rpb,224,12.34,20.0\n')
    folder = tmp_path / 'export'
    cli_main(['export', 'vit_tiny_ape', str(folder), '--checkpoint', str(tmp_path / 'trained.safetensors'),
              '--img-size', '112', '--num-classes', '10', '--model-kwargs', 'depth=1',
              '--metrics', str(tmp_path / 'results.csv'), '--metrics-model', 'vit_tiny_ape',
              '--repo-id', 'someone/tiny-ape'])
    config = json.loads((folder / 'config.json').read_text())
    assert config['model_args']['depth'] == 1 and config['pretrained_cfg']['input_size'] == [3, 112, 112]
    reloaded = timm.create_model('local-dir:' + str(folder), pretrained=True)
    assert torch.equal(logits(reloaded, 112), logits(model, 112))
    card = (folder / 'README.md').read_text()
    assert '| 224 | 55.48 |\n| 288 | 57.14 |' in card and '12.34' not in card
    assert "```python\nimport timm_pe" in card and "create_model('hf-hub:someone/tiny-ape'" in card

    RecordingHubApi.calls = []
    monkeypatch.setattr(timm_pe.publish, 'HfApi', RecordingHubApi)
    cli_main(['push', str(folder), 'someone/tiny-ape', '--private'])
    (_, init), (_, repo_id, create), (_, upload) = RecordingHubApi.calls
    assert init['library_name'] == 'timm-pe' and repo_id == 'someone/tiny-ape'
    assert create == dict(private=True, exist_ok=True)
    assert upload['repo_id'] == 'someone/tiny-ape' and upload['folder_path'] == str(folder)
    assert sorted(upload['allow_patterns']) == ['README.md', 'config.json', SAFE]  # never a pickle

    (folder / SAFE).unlink()
    RecordingHubApi.calls = []
    with pytest.raises(FileNotFoundError, match=SAFE):
        push(folder, 'someone/tiny-ape', api=RecordingHubApi())
    assert RecordingHubApi.calls == [('init', {})]


def test_committed_cards_match_the_registered_tags():
    cards = REPO / 'model_cards'
    assert {p.stem for p in cards.glob('*.md')} - {'TEMPLATE'} == set(timm_pe.publish.registered_tags())
    spec = importlib.util.spec_from_file_location('generate_cards', cards / 'generate.py')
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    for name in ('vit_small_rope_mixed.in100', 'vit_small_ape.fb_in1k'):
        assert (cards / f'{name}.md').read_text() == generate.card_text(name), f'regenerate {name}'


def test_card_states_only_what_the_export_knows(tmp_path):
    """An untagged export: no dataset claimed, no training size asserted, the encoding's citations only."""
    model = timm.create_model('vit_tiny_alibi2d', depth=1, img_size=96, num_classes=10)
    card = (export(model, tmp_path / 'alibi', repo_id='someone/alibi') / 'README.md').read_text()
    assert 'datasets:' not in card and 'ImageNet-1k' not in card
    assert '**Dataset:** not recorded; 10 classes' in card
    assert '**Image size:** built at 96 x 96; the training size is not recorded' in card
    assert 'press2022alibi' in card and 'fuller2023croma' in card and 'rw2019timm' in card
    assert 'heo2024rope' not in card and 'liu2021swin' not in card and 'touvron2022deit3' not in card
    # a RoPE model knows its training size from the grid recorded with it; its snippet is plain extrapolation
    rope = timm.create_model('vit_tiny_rope_axial', depth=1, rope_train_img_size=128, img_size=192)
    card = (export(rope, tmp_path / 'rope') / 'README.md').read_text()
    assert '**Image size:** trained at 128 x 128' in card and 'heo2024rope' in card
    assert "pretrained=True, img_size=384).eval()" in card and "img_size=384, rope_scaling" not in card
    assert "`rope_scaling='interp'`" in card and 'table above are without it' in card
    # converted ImageNet-1k weights say so, with the papers of encoding and weights
    deit = get_pretrained_cfg('vit_small_ape.fb_in1k')
    card = (REPO / 'model_cards' / 'vit_small_ape.fb_in1k.md').read_text()
    assert 'datasets:\n- imagenet-1k' in card and '**Dataset:** ImageNet-1k; 1000 classes' in card
    assert 'dosovitskiy2021vit' in card and 'touvron2022deit3' in card and deit.origin_url in card


def test_cli_exports_a_model_without_weights_with_random_init(tmp_path):
    folder = tmp_path / 'untrained'
    cli_main(['export', 'vit_tiny_rope_mixed', str(folder), '--random-init', '--model-kwargs', 'depth=1'])
    card = (folder / 'README.md').read_text()
    assert 'not trained' in card and 'freshly initialised' in card and 'datasets:' not in card
    reloaded = timm.create_model('local-dir:' + str(folder), pretrained=True)
    assert len(reloaded.blocks) == 1 and torch.isfinite(logits(reloaded)).all()
    with pytest.raises(ValueError, match='no weights to load'):  # without the flag: refused, not random
        cli_main(['export', 'vit_tiny_rope_mixed', str(tmp_path / 'refused'), '--model-kwargs', 'depth=1'])


@pytest.mark.parametrize('name,options', [('vit_tiny_lookhere', dict(lookhere_directions='corners')),
                                          ('vit_tiny_alibi2d_sq', {}),
                                          ('vit_tiny_rope_dinov3', dict(rope_rescale_coords=1.5))])
def test_new_encodings_export_and_reload_at_another_size(tmp_path, hub_cache, name, options):
    model = timm.create_model(name, depth=2, embed_dim=48, **options)
    hub_cache('someone/new-pe', exported_files(export(model, tmp_path / 'export')))
    reloaded = timm.create_model('hf-hub:someone/new-pe', pretrained=True)
    assert torch.equal(logits(reloaded), logits(model))
    for option, value in options.items():
        assert get_model_args(reloaded)[option] == value
    at_320 = timm.create_model('hf-hub:someone/new-pe', pretrained=True, img_size=320)
    model.set_input_size(img_size=320)
    assert torch.equal(logits(at_320, 320), logits(model, 320))
    assert 'rope_scaling' not in (tmp_path / 'export' / 'README.md').read_text()  # no RoPE hook they lack
