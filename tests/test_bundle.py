"""`arena-dist bundle`: the predict config's paths rewritten to the bundled copies, exact pins, the wheelhouse's
closure for the target, run.py's command; and the whole way through: a bundle with a full export and a LoRA export
whose base stays outside, installed into a fresh virtual environment that has only torch, run without any network,
gives a valid submission equal to predict's on the original exports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # hub_checkpoints

from arena_dist.bundle import entry  # noqa: E402
from arena_dist.bundle.build import check_previous_bundle, plan_bundle  # noqa: E402
from arena_dist.bundle.wheelhouse import TargetSpec, Wheel, closure_problems, manylinux_platforms, \
    pinned_requirements, provided_by_torch  # noqa: E402
from arena_dist.cli import main  # noqa: E402
from arena_dist.errors import ConfigError, InputError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUNTIME = REPO / "requirements" / "runtime.txt"
CONSTRAINTS = REPO / "requirements" / "constraints.txt"
# Importable in the project's environment, never in the target's before the bundle is installed (torch only).
RUNTIME_MODULES = ("transformers", "peft", "accelerate", "pandas", "pyarrow", "numpy", "yaml", "pydantic",
                   "safetensors", "tokenizers", "arena_dist")
NEVER_SHIPPED = ("ray", "deepspeed")
NET_END = "-- end of the namespace's interfaces --"


def lora_export_on_a_checkpoint(root: Path) -> tuple[Path, Path]:
    """A LoRA export whose base is a hub-layout checkpoint recorded by its folder (as a student's base is), its
    adapter moved off init so the base and the adapter both show in the probabilities."""
    import torch
    from hub_checkpoints import build_checkpoint, build_tokenizer

    from arena_dist.models.build import build_model
    from arena_dist.models.config import ModelConfig
    from arena_dist.models.export import save_export

    base = build_checkpoint(root / "hub", "llama", "causal_lm")
    model = build_model(ModelConfig(name_or_path=str(base), lora={"r": 4, "alpha": 8, "dropout": 0.0}), 3, 0)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    tokenizer = build_tokenizer("llama")
    tokenizer.pad_token = "<|finetune_right_pad_id|>"
    meta = {"label_mode": "3class", "template": "llama3", "max_length": 256}
    return base, save_export(model.eval(), tokenizer, root / "student" / "export", meta)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tiny_fixtures import make_teacher_export

    from arena_dist.stages import synth

    root = tmp_path_factory.mktemp("bundle")
    synth.run(synth.Config(output_dir=str(root / "synth"), n_train=0, n_test=12, n_pool=0, n_wsdm_train=0,
                           n_wsdm_test=0, n_pairwise=0, progress=False))
    base, lora = lora_export_on_a_checkpoint(root)
    full = make_teacher_export(root / "teacher" / "export", seed=1, head_std=2.0, max_length=256)
    return {"root": root, "test_file": root / "synth" / "lmsys" / "test.csv", "full": full, "lora": lora,
            "base": base}


def predict_tree(test_file, output_dir, exports: list[Path]) -> dict:
    """A predict config blending the exports with equal weights on every row, each in its direct order."""
    return {"test_file": str(test_file), "output_dir": str(output_dir), "batching": {"max_tokens": 4096},
            "threads": 1, "models": [{"export_path": str(path), "weight": 1 / len(exports)} for path in exports],
            "refine": [{"member": member, "swap": False} for member in range(1, len(exports))]}


def write_yaml(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def export_keys(tree, key="") -> dict[str, str]:
    """{dotted key of every export_path: its value}."""
    found = {}
    if isinstance(tree, dict):
        for name, value in tree.items():
            at = f"{key}.{name}" if key else name
            if name == "export_path":
                found[at] = value
            found.update(export_keys(value, at))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found.update(export_keys(value, f"{key}.{index}" if key else str(index)))
    return found


# ------------------------------------------------------------------------------------------------- fast checks
def test_every_export_path_is_rewritten_and_a_lora_base_points_at_the_target(models, tmp_path):
    tree = predict_tree(models["test_file"], tmp_path / "out", [models["full"], models["lora"]])
    tree["notes"] = {"same_model": str(models["full"])}  # any string naming an export is rewritten too
    plan = plan_bundle(str(write_yaml(tmp_path / "predict.yaml", tree)), copy_bases=False,
                       base_paths={str(models["base"]): "/kaggle/input/llama-base"})
    rewritten = export_keys(plan.tree)
    assert len(rewritten) == 2 and set(rewritten) == set(export_keys(tree))
    assert sorted(rewritten.values()) == ["exports/student", "exports/teacher"]  # `export` says nothing: the parent
    assert plan.anchored == {**rewritten, "notes.same_model": "exports/teacher"}
    lora_key = next(key for key, value in rewritten.items() if value == "exports/student").rsplit(".", 1)[0]
    lora_member = plan.tree
    for part in lora_key.split("."):
        lora_member = lora_member[int(part) if isinstance(lora_member, list) else part]
    assert lora_member["base_path"] == "/kaggle/input/llama-base"
    assert plan.placement.external_bases == {lora_key: "/kaggle/input/llama-base"}
    assert plan.tree["test_file"] == str(models["test_file"])  # not an export: left as it was

    copied = plan_bundle(str(tmp_path / "predict.yaml"), copy_bases=True, base_paths={})
    assert list(copied.placement.bases) == [models["base"].resolve()]
    assert copied.anchored[f"{lora_key}.base_path"] == "bases/llama-causal_lm"


def test_a_missing_export_or_an_unmapped_base_is_an_error_naming_it(models, tmp_path):
    missing = tmp_path / "runs" / "gone" / "export"
    config = write_yaml(tmp_path / "predict.yaml",
                        predict_tree(models["test_file"], tmp_path / "out", [models["full"], missing]))
    with pytest.raises(InputError, match="export_path") as err:
        plan_bundle(str(config), copy_bases=False, base_paths={})
    assert str(missing) in str(err.value) and str(config) in str(err.value)

    config = write_yaml(tmp_path / "predict.yaml",
                        predict_tree(models["test_file"], tmp_path / "out", [models["full"], models["lora"]]))
    with pytest.raises(ConfigError, match="base_paths") as err:
        plan_bundle(str(config), copy_bases=False, base_paths={})
    assert str(models["base"]) in str(err.value)
    with pytest.raises(ConfigError, match="no export_path"):
        plan_bundle(str(write_yaml(tmp_path / "empty.yaml", {"test_file": "t.csv"})), False, {})


def test_runtime_pins_are_exact_complete_and_what_this_environment_runs():
    """requirements/runtime.txt + constraints.txt pin every package exactly, at the versions installed here (what
    the tests run), and the list is closed: every requirement of every runtime package, as installed, is in it or
    comes with torch."""
    from importlib import metadata

    target = TargetSpec()
    pins = pinned_requirements(RUNTIME, CONSTRAINTS, target)
    assert {pin.name for pin in pins} >= {"transformers", "peft", "accelerate", "bitsandbytes", "pandas"}
    assert not {pin.name for pin in pins} & {"torch", *NEVER_SHIPPED}
    assert {pin.name: pin.version for pin in pins} == {pin.name: metadata.version(pin.name) for pin in pins}
    installed = [Wheel(Path(pin.name), pin.name, pin.version, metadata.requires(pin.name) or []) for pin in pins]
    assert closure_problems(installed, provided_by_torch(target), target) == []
    assert closure_problems(installed[1:], provided_by_torch(target), target) != []  # the check does see a gap


def test_an_unpinned_or_contradicting_requirement_is_refused(tmp_path):
    runtime = tmp_path / "runtime.txt"
    runtime.write_text("# comment\ntransformers\nrich>=13\n")
    with pytest.raises(ConfigError, match=r"runtime.txt:3: rich must be pinned with =="):
        pinned_requirements(runtime, CONSTRAINTS, TargetSpec())
    runtime.write_text("transformers\nrich\n")
    with pytest.raises(ConfigError, match=r"runtime.txt:2: rich has no exact version"):
        pinned_requirements(runtime, CONSTRAINTS, TargetSpec())
    runtime.write_text("transformers==0.1\n")
    with pytest.raises(ConfigError, match=r"transformers==0.1 but .*constraints.txt:\d+ pins"):
        pinned_requirements(runtime, CONSTRAINTS, TargetSpec())
    runtime.write_text("transformers\ntomli==2.0.1; python_version < '3.11'\n")
    old = TargetSpec("3.10", "manylinux_2_35_x86_64")
    assert [pin.name for pin in pinned_requirements(runtime, CONSTRAINTS, old)] == ["transformers", "tomli"]
    assert [pin.name for pin in pinned_requirements(runtime, CONSTRAINTS, TargetSpec("3.11", old.platform))] == [
        "transformers"]


def test_the_closure_is_checked_for_the_targets_python_and_machine():
    anyio = Wheel(Path("anyio.whl"), "anyio", "4.16.0",
                  ["idna>=2.8", "exceptiongroup>=1.0.2; python_version < '3.11'", "trio>=0.31; extra == 'trio'",
                   "uvloop; platform_machine == 'aarch64'"])
    idna = Wheel(Path("idna.whl"), "idna", "3.20", [])
    for machine in ("x86_64", "aarch64"):
        new, old = (TargetSpec(version, f"manylinux_2_35_{machine}") for version in ("3.11", "3.10"))
        expected_new = [] if machine == "x86_64" else ["anyio 4.16.0 needs uvloop; platform_machine == \"aarch64\""]
        assert closure_problems([anyio, idna], set(), new) == expected_new
        assert "anyio 4.16.0 needs exceptiongroup>=1.0.2; python_version < \"3.11\"" in \
            closure_problems([anyio, idna], set(), old)
    too_old = Wheel(Path("idna.whl"), "idna", "2.5", [])
    assert closure_problems([anyio, too_old], set(), TargetSpec("3.11", "manylinux_2_35_x86_64")) == [
        "anyio 4.16.0 needs idna>=2.8, the wheelhouse has 2.5"]


def test_manylinux_platforms_include_every_older_glibc_of_the_machine():
    tags = manylinux_platforms("manylinux_2_35_x86_64")
    assert tags[0] == "manylinux_2_35_x86_64" and "manylinux_2_28_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux1_x86_64" in tags and not any("2_36" in tag or "aarch64" in tag for tag in tags)
    assert manylinux_platforms("manylinux2014_x86_64")[:2] == ["manylinux2014_x86_64", "manylinux_2_17_x86_64"]
    assert "manylinux_2_28_x86_64" not in manylinux_platforms("manylinux2014_x86_64")
    with pytest.raises(ConfigError, match="target.platform 'win_amd64'"):
        manylinux_platforms("win_amd64")


def test_run_script_anchors_the_bundled_paths_and_spends_the_budget(tmp_path):
    manifest = {"target": {"python_version": f"{sys.version_info.major}.{sys.version_info.minor}"},
                "wheels": [{"file": "a-1-py3-none-any.whl"}],
                "anchored": {"models.0.export_path": "exports/student", "models.0.base_path": "bases/x"}}
    bundle = tmp_path / "my bundle: v1"
    args = entry.parse_args(["--test-file", "t.csv", "--output-dir", "out", "--time-budget", "100",
                             "--set", "batching.max_tokens=1024"])
    command = entry.predict_command(bundle, manifest, args, spent_s=30.5)
    assert command[:6] == [sys.executable, "-m", "arena_dist.cli", "predict", "--config",
                           str(bundle / "predict.yaml")]
    sets = command[7::2]
    assert sets == [f"models.0.export_path='{bundle}/exports/student'", f"models.0.base_path='{bundle}/bases/x'",
                    f"test_file='{os.path.abspath('t.csv')}'", f"output_dir='{os.path.abspath('out')}'",
                    "time_budget=69.5", "batching.max_tokens=1024"]
    from arena_dist.config import parse_override

    assert parse_override(sets[0]) == (["models", "0", "export_path"], f"{bundle}/exports/student")  # the `: `
    assert entry.install_command(bundle, manifest)[-1] == str(bundle / "wheelhouse" / "a-1-py3-none-any.whl")
    with pytest.raises(SystemExit, match="took 120 s of the 100 s"):
        entry.predict_command(bundle, manifest, args, spent_s=120)
    assert entry.check_python(manifest) is None
    assert "wheels are for Python 2.7" in entry.check_python({"target": {"python_version": "2.7"}})


def test_output_dir_is_a_new_folder_or_an_earlier_bundle(tmp_path, capsys):
    from arena_dist.io import claim_output_dir

    predict_output = claim_output_dir(tmp_path / "predicted")
    (predict_output / "submission.csv").write_text("id\n")
    with pytest.raises(InputError, match="another stage's output .*'submission.csv'"):
        check_previous_bundle(predict_output)
    earlier = claim_output_dir(tmp_path / "bundle")
    (earlier / "manifest.json").write_text(json.dumps({"kind": "arena_dist bundle"}))
    check_previous_bundle(earlier)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    config = tmp_path / "bundle.yaml"
    config.write_text(yaml.safe_dump({"predict_config": str(tmp_path / "p.yaml"), "output_dir": str(foreign)}))
    assert main(["bundle", "--config", str(config)]) == 2
    assert f"{foreign}: output_dir holds files arena_dist did not write" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "x" and sorted(os.listdir(foreign)) == ["notes.txt"]


# ------------------------------------------------------------------------------------------ the whole way through
def network_free_reason() -> str | None:
    """Why commands cannot run in a fresh network namespace here (None when they can)."""
    if os.geteuid() != 0:
        return "running without any network needs root (`unshare --net`)"
    if shutil.which("unshare") is None:
        return "running without any network needs `unshare` (util-linux)"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`unshare --net` is refused here ({probe.stderr.strip()})"
    return None


def torch_only_venv(directory: Path) -> Path:
    """A fresh virtual environment (with its own pip) that sees torch and torch's own dependencies, nothing else:
    what a notebook image offers before the bundle is installed. Installing torch into it takes minutes (and from a
    public index, a CUDA build); instead one extra path, named by a .pth file, holds links to exactly the files of
    torch's installation here and of the packages it requires."""
    from importlib import metadata

    subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True, timeout=300)
    python = directory / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    links = directory / "torch-site"
    links.mkdir()
    for name in provided_by_torch(TargetSpec()):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for top in {Path(file).parts[0] for file in dist.files or []} - {"..", "__pycache__"}:
            if not (links / top).exists():
                (links / top).symlink_to(Path(dist.locate_file(top)).resolve())
    (site / "torch-only.pth").write_text(f"{links}\n")
    return python


def clean_env() -> dict[str, str]:
    """The environment of a fresh notebook: no PYTHONPATH into this checkout, no pip configuration."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "ARENA_DIST"))}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "OMP_NUM_THREADS": "1"}


def importable(python: Path, modules, cwd: Path) -> list[str]:
    script = ("import importlib.util, sys\n"
              "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None))")
    done = subprocess.run([str(python), "-c", script, *modules], capture_output=True, text=True, check=True,
                          cwd=cwd, env=clean_env())
    return done.stdout.split()


@pytest.mark.slow
def test_a_bundle_installs_into_a_torch_only_environment_and_predicts_without_network(models, tmp_path):
    reason = network_free_reason()
    if reason:
        pytest.skip(reason)
    from arena_dist.predict.submission import check_submission, read_table
    from arena_dist.predict.testfile import read_test_file
    from arena_dist.artefacts import read_artefact
    from arena_dist.io import OWNER_MARKER, sha256_file

    started = time.monotonic()
    exports = [models["full"], models["lora"]]
    predict_config = write_yaml(tmp_path / "predict.yaml",
                                predict_tree(models["test_file"], tmp_path / "reference", exports))
    assert main(["predict", "--config", str(predict_config)]) == 0
    reference = pd.read_parquet(tmp_path / "reference" / "probabilities.parquet")

    # The base is served from elsewhere on the target (a model input), so it stays out of the bundle.
    served = tmp_path / "input" / "llama-base"
    bundle, work = tmp_path / "bundle", tmp_path / "working"
    out = work / "submission"
    notebook = {"bundle_dir": str(bundle), "time_budget_s": 3600}
    config = write_yaml(tmp_path / "bundle.yaml", {
        "predict_config": str(predict_config), "output_dir": str(bundle), "target": "local",
        "base_paths": {str(models["base"]): str(served)}, "predict_overrides": [f"output_dir={out}"],
        "notebook": notebook})
    assert main(["bundle", "--config", str(config)]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    wheels = {wheel["name"] for wheel in manifest["wheels"]}
    assert {"arena-dist", "transformers", "peft", "pandas"} <= wheels and not wheels & {"torch", *NEVER_SHIPPED}
    assert sorted(manifest["exports"]) == ["exports/student", "exports/teacher"] and manifest["bases"] == {}
    assert manifest["target"]["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    for relative, export in manifest["exports"].items():  # every file of the source, with its sha256
        source = Path(export["source"])
        files = {p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()} - {OWNER_MARKER}
        assert set(export["files"]) == files
        assert all(sha256_file(source / name) == entry["sha256"] == sha256_file(bundle / relative / name)
                   for name, entry in export["files"].items())
    record = read_artefact(bundle)
    assert (record.stage, record.status, record.headline, record.rows) == (
        "bundle", "succeeded", "bundle_mb", {"exports": 2, "bases": 0, "wheels": len(wheels)})

    # Nothing outside the bundle is left but the base, which moved to where the target serves it.
    shutil.move(str(models["base"]), str(served))
    for export in exports:
        shutil.rmtree(export)
    python = torch_only_venv(tmp_path / "venv")
    work.mkdir()
    assert importable(python, ["torch", *RUNTIME_MODULES, *NEVER_SHIPPED], work) == ["torch"]

    # The notebook cell as pasted, in a network namespace of its own: nothing but a loopback interface.
    command = ["unshare", "--net", "--", "sh", "-c", 'cat /proc/self/net/dev && echo "$0" && exec "$@"', NET_END,
               str(python), str(bundle / "notebook_cell.py")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=work, env=clean_env(), timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    net_dev = done.stdout.split(NET_END)[0].splitlines()[2:]  # after /proc/net/dev's two header lines
    assert [line.split(":")[0].strip() for line in net_dev] == ["lo"], done.stdout[:600]  # no other interface
    assert "run.py: installing" in done.stdout and "predict: wrote" in done.stdout  # shown through the cell

    ids, _, _ = read_test_file(models["test_file"])
    check_submission(read_table(out / "submission.csv"), ids, "lmsys")
    probabilities = pd.read_parquet(out / "probabilities.parquet")
    columns = ["winner_model_a", "winner_model_b", "winner_tie"]
    pd.testing.assert_frame_equal(probabilities[["id", *columns]], reference[["id", *columns]], atol=1e-5)

    installed = importable(python, [*RUNTIME_MODULES, *NEVER_SHIPPED], work)
    assert installed == list(RUNTIME_MODULES)  # from the wheelhouse; ray / deepspeed were never there
    where = subprocess.run([str(python), "-c", "import arena_dist; print(arena_dist.__file__)"], capture_output=True,
                           text=True, check=True, cwd=work, env=clean_env()).stdout
    assert where.startswith(str(tmp_path / "venv" / "lib"))  # the wheel's copy, not this checkout
    print(f"bundle end to end: {time.monotonic() - started:.0f} s, wheelhouse "
          f"{manifest['sizes']['wheelhouse'] / 2**20:.1f} MB in {len(manifest['wheels'])} wheels")
