"""Structure of the package: no import cycles, no branches on task kinds or method names outside
their registered classes, registries and hooks instead of lists (issue #12)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import compose

PKG = Path(__file__).resolve().parents[1] / "lora_research"


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module → the ``lora_research`` modules it imports, at any depth of the file (lazy imports count)."""
    mods = _modules()
    graph = {}
    for name, (path, is_pkg) in mods.items():
        package = name if is_pkg else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                for a in node.names:  # `from pkg import submodule` imports the submodule
                    edges.add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base)
        graph[name] = {e for e in edges if e in mods and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_known_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_the_package():
    graph = import_graph()
    assert "lora_research.config" in graph and "lora_research.tasks.e2e_task" in graph
    assert cycles(graph) == []


def _registered_names() -> tuple[set[str], set[str]]:
    from lora_research.methods import METHODS
    from lora_research.tasks import TASKS

    return set(METHODS), set(TASKS)


def _branches(path: Path, method_names: set[str], kinds: set[str]) -> list[str]:
    """Comparisons on ``.kind`` / a task kind, and method names tested in code that talks about methods."""
    src = path.read_text(encoding="utf-8")
    tree = ast.parse(src)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            text = ast.get_source_segment(src, node) or ""
            strings = {n.value for o in operands for n in ast.walk(o) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            if any(isinstance(o, ast.Attribute) and o.attr == "kind" for o in operands) or strings & kinds:
                bad.append(f"{path.name}:{node.lineno}: {text}")
            elif "method" in text.lower() and strings & method_names:
                bad.append(f"{path.name}:{node.lineno}: {text}")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):  # NAME_METHODS = ("full_ft", ...): a name list
            text = ast.get_source_segment(src, node) or ""
            value = node.value
            if isinstance(value, (ast.Tuple, ast.List, ast.Set)) and "method" in text.lower():
                names = {e.value for e in value.elts if isinstance(e, ast.Constant)}
                if names & method_names:
                    bad.append(f"{path.name}:{node.lineno}: {text}")
    return bad


# (#11 moved ΔW to lora_research/adapter_file.py and the synthetic fixtures to tests/: none left)
ALLOWED: set = set()


def test_branch_finder_sees_kind_and_method_branches(tmp_path):
    f = tmp_path / "x.py"
    f.write_text('if task.kind != "glue":\n    pass\nif run.method.name == "lora":\n    pass\n'
                 'FT_METHODS = ("full_ft",)\nif style == "lora":\n    pass\n')
    assert sorted(b.split(":")[1] for b in _branches(f, {"lora", "full_ft"}, {"glue"})) == ["1", "3", "5"]


def test_no_task_kind_or_method_name_branches():
    methods, kinds = _registered_names()
    found = [b for p in sorted(PKG.rglob("*.py")) for b in _branches(p, methods, kinds)]
    assert [b for b in found if ":".join(b.split(":")[:2]) not in ALLOWED] == []


def test_registries_hold_every_method_and_task_with_their_schemas():
    from dataclasses import fields

    from lora_research.methods import METHODS
    from lora_research.tasks import TASKS

    assert {"lora", "full_ft", "ft_top2", "bitfit", "adapter_h", "adapter_l", "adapter_p", "adapter_drop",
            "prefix_embed", "prefix_layer"} <= set(METHODS)
    assert set(TASKS) == {"glue", "e2e"}
    for name, cls in METHODS.items():
        assert cls.name == name and "name" in {f.name for f in fields(cls.Config)}
    for kind, cls in TASKS.items():
        assert cls.kind == kind and cls.Config().kind == kind


def test_a_method_registered_elsewhere_is_found_by_name(monkeypatch):
    """Entry points (group ``lora_research.methods``) let a third-party package add a method."""
    import importlib.metadata as md
    from dataclasses import dataclass

    from lora_research.methods import METHODS, Method, build_method, get_method_class

    @dataclass
    class NoOpConfig:
        name: str = "noop_plugin"

    class NoOp(Method):
        name = "noop_plugin"
        Config = NoOpConfig

        def apply(self, model, family):
            return model

    ep = md.EntryPoint(name="noop_plugin", value="x:y", group="lora_research.methods")
    monkeypatch.setattr(md.EntryPoint, "load", lambda self: NoOp)
    monkeypatch.setattr(md, "entry_points", lambda group=None: [ep] if group == "lora_research.methods" else [])
    monkeypatch.delitem(METHODS, "noop_plugin", raising=False)
    try:
        assert get_method_class("noop_plugin") is NoOp
        assert build_method({"name": "noop_plugin"}).label() == "noop_plugin"
    finally:
        METHODS.pop("noop_plugin", None)
    with pytest.raises(ValueError, match=r"unknown method 'nope'; valid choices: \[.*'lora'"):
        get_method_class("nope")


@pytest.mark.parametrize("model,family", [("minilm", "bert"), ("tiny_roberta", "roberta"),
                                          ("tiny_gpt2", "gpt2"), ("tiny_llama", "llama")])
def test_family_comes_from_the_checkpoint_config(model, family):
    """No ``family:`` in these YAMLs: it is read from config.json / config_overrides.model_type."""
    from lora_research.config import validate

    assert compose([f"model={model}"]).model.family is None
    overrides = [f"model={model}", "logger=none"] + (["task=e2e"] if family in ("gpt2", "llama") else [])
    assert validate(compose(overrides)).model.family == family


@pytest.mark.parametrize("overrides,line", [
    (["model=gpt2", "task=sst2"], "task=sst2 needs a classification head, which model family 'gpt2' does not have"),
    (["model=minilm", "task=e2e"], "task=e2e needs a generation head, which model family 'bert' does not have"),
    (["model=tiny_llama", "task=stsb"], "task=stsb needs a regression head, which model family 'llama' does not have"),
])
def test_incompatible_model_and_task_are_refused_at_validation(overrides, line):
    from lora_research.config import validate

    with pytest.raises(ValueError) as e:
        validate(compose(overrides + ["logger=none"]))
    assert line in str(e.value) and "\n" not in str(e.value)


def test_method_validates_against_the_family():
    from lora_research.config import validate

    with pytest.raises(ValueError, match=r"unknown target matrix 'mlp_gate' for model family 'bert'"):
        validate(compose(["method.targets=[q,mlp_gate]", "logger=none"]))


def test_head_follows_the_task():
    from lora_research.models import ModelConfig, load_model

    cfg = ModelConfig(random_init=True, config_overrides={"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1,
                                                          "num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 64})
    assert load_model(cfg, head="regression").classifier.out_features == 1
    assert load_model(cfg, head="classification", num_labels=3).classifier.out_features == 3
    with pytest.raises(ValueError, match="model family 'bert' has no generation head"):
        load_model(cfg, head="generation")


@pytest.mark.parametrize("group", ["method", "task", "model", "trainer", "logger"])
def test_group_yamls_build_on_their_schema_and_hold_only_what_differs(group):
    """One source of defaults: each YAML's first default is its schema (``/schema/<group>/<name>@_here_``);
    a key whose value equals the schema's default is not repeated; the composed group equals the schema's
    defaults updated by the file."""
    from omegaconf import OmegaConf

    from conftest import CONF
    from lora_research import config
    from lora_research.methods import METHODS
    from lora_research.tasks import TASKS

    fixed = config.GROUP_SCHEMAS
    for path in sorted((CONF / group).glob("*.yaml")):
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        base = raw.pop("defaults")[0]
        if base in ("default", "_self_"):  # trainer/cpu_short builds on trainer/default
            continue
        assert base.endswith("@_here_"), (path.name, base)
        name = base[: -len("@_here_")].split("/")[-1]
        assert base.startswith(f"/schema/{group}/"), (path.name, base)
        schema = {"method": METHODS, "task": TASKS}.get(group, {}).get(name)
        schema = schema.Config if schema is not None else fixed[group]
        defaults = config.schema_defaults(schema)
        assert _repeated(raw, defaults) == [], f"{path.name} repeats the schema's defaults"
        assert set(raw) <= set(defaults), f"{path.name}: keys not in {schema.__name__}: {set(raw) - set(defaults)}"
        composed = OmegaConf.to_container(getattr(compose([f"{group}={path.stem}", "logger=none"] if group != "logger"
                                                          else [f"logger={path.stem}"]), group), resolve=False)
        assert composed == OmegaConf.to_container(OmegaConf.merge(defaults, raw), resolve=False), path.name


def _repeated(raw: dict, defaults: dict, prefix: str = "") -> list:
    out = []
    for k, v in raw.items():
        d = defaults.get(k, object())
        if isinstance(v, dict) and v and isinstance(d, dict):
            out += _repeated(v, d, f"{prefix}{k}.")
        elif v == d:
            out.append(prefix + k)
    return out
