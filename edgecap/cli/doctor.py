"""``edgecap doctor``: what this installation runs on, whether it works, and how to fix it.

Each check reports ``ok``, ``warn`` (works, but could be better, with the fix), ``fail``
(broken, with the fix) or ``skip`` (cannot run because an earlier check failed). The last
check captions the bundled sample image for real — on the tiny demo model, or with
``--smoke-model`` on an installed one — which proves the backend actually runs and shows where
the time goes. Exit code 1 when any check fails.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from edgecap import __version__
from edgecap.cli.demo import DEMO_MODEL, caption_sample
from edgecap.cli.render import to_json
from edgecap.config import Settings, load_settings
from edgecap.engine.gguf_check import check_mmproj, check_pair
from edgecap.engine.hardware import physical_cores, recommend
from edgecap.errors import EdgecapError, ModelNotReady
from edgecap.registry import Registry

Status = Literal["ok", "warn", "fail", "skip"]
PINNED_LLAMA_CPP_PYTHON = "0.3.36"  # the version docs/qwen25vl-gguf.md was checked against
SMOKE_MAX_TOKENS = 8
# SIMD features that matter for llama.cpp's CPU speed, in the order to show them.
SIMD_FEATURES = (
    "AVX", "AVX2", "FMA", "F16C", "AVX_VNNI", "AVX512", "AVX512_VBMI", "AVX512_VNNI",
    "AVX512_BF16", "AMX_INT8", "NEON", "ARM_FMA", "FP16_VA", "DOTPROD", "MATMUL_INT8",
    "SVE", "SME",
)  # fmt: skip
FILE_TYPE_NAMES = {0: "f32", 1: "f16", 32: "bf16", 7: "q8_0"}  # llama_ftype of a projector
INSTALL_LLAMA_CPP = (
    f"pip install llama-cpp-python=={PINNED_LLAMA_CPP_PYTHON} (it compiles llama.cpp, about "
    "5 minutes on 2 cores; `make demo` does it)"
)


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)  # the figures, for --json

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}
        return out | self.data


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check the installation: versions, backend, CPU features, models, a smoke caption",
        description=(
            "Check what edgecap runs on and that it works, ending with a real caption of the "
            "sample image. Exit code 1 when something is broken; each problem comes with its fix."
        ),
    )
    parser.add_argument(
        "--output",
        choices=["text", "json"],
        default="text",
        help="text for people (default), json for scripts",
    )
    parser.add_argument(
        "--json", dest="output", action="store_const", const="json", help="= --output json"
    )
    parser.add_argument(
        "--smoke-model",
        nargs="?",
        const="",
        metavar="NAME",
        help=f"smoke-test this installed model (alone: the default one) instead of {DEMO_MODEL}",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="do not re-hash the default model's files"
    )
    parser.add_argument(
        "--measure-projectors",
        action="store_true",
        help="time one encode with each installed f16 and bf16 projector of the default model "
        "(where both are installed) and check the recommendation against them",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    checks = diagnose(settings, smoke_model=args.smoke_model, verify=not args.no_verify)
    if args.measure_projectors:
        checks.append(_guarded("projectors", lambda: check_projectors(settings)))
    failed = [c for c in checks if c.status == "fail"]
    if args.output == "json":
        measured = next((c.data for c in checks if c.name == "projectors"), {})
        report = {
            "ok": not failed,
            "recommendations": recommendations() | measured,
            "checks": [c.to_dict() for c in checks],
        }
        print(to_json(report, indent=2))
    else:
        for check in checks:
            print(f"{check.status:<5} {check.name:<9} {check.detail}")
            if check.fix:
                print(f"{'':<15} fix: {check.fix}")
        print(verdict(checks))
    return 1 if failed else 0


def verdict(checks: list[Check]) -> str:
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    if failed:
        return f"{failed} problem(s), {warned} warning(s): apply the fixes above"
    if warned:
        return f"edgecap works, with {warned} warning(s)"
    return "edgecap works"


def diagnose(settings: Settings, *, smoke_model: str | None, verify: bool) -> list[Check]:
    """Every check, in order. ``smoke_model``: None = the demo model, "" = the default."""
    versions = check_versions()
    llama_loads = versions.status != "fail"
    steps: list[tuple[str, bool, Callable[[], Check]]] = [
        ("backend", True, lambda: check_backend(settings)),
        ("threads", False, lambda: check_threads(settings)),
        ("files", False, lambda: check_files(settings)),
        ("models", False, lambda: check_models(settings, verify=verify)),
        ("smoke", True, lambda: check_smoke(settings, smoke_model)),
    ]
    checks = [versions]
    for name, needs_llama, step in steps:
        if needs_llama and not llama_loads:
            checks.append(Check(name, "skip", "skipped: llama-cpp-python does not load"))
        else:
            checks.append(_guarded(name, step))
    return checks


def _guarded(name: str, step: Callable[[], Check]) -> Check:
    """A check that raised is a failed check, never a traceback."""
    try:
        return step()
    except EdgecapError as exc:
        return Check(name, "fail", exc.message)


# ---------------------------------------------------------------------------- the checks


def check_versions() -> Check:
    data: dict[str, Any] = {"edgecap": __version__, "python": platform.python_version()}
    try:
        data["llama_cpp_python"] = importlib.metadata.version("llama-cpp-python")
        import llama_cpp  # noqa: F401 - loads the native library: the real test
    except (ImportError, OSError, RuntimeError) as exc:  # not installed, or its library fails
        detail = f"llama-cpp-python does not load: {exc}"
        return Check("versions", "fail", detail, INSTALL_LLAMA_CPP, data)
    data["llama_cpp"] = llama_cpp_build()
    detail = (
        f"edgecap {__version__}, llama-cpp-python {data['llama_cpp_python']}, llama.cpp "
        f"{data['llama_cpp']}, Python {data['python']}"
    )
    if data["llama_cpp_python"] != PINNED_LLAMA_CPP_PYTHON:
        fix = f"edgecap is tested with this version only: {INSTALL_LLAMA_CPP}"
        return Check("versions", "warn", detail, fix, data)
    return Check("versions", "ok", detail, data=data)


EXTRA_BUFFERS_DETAIL = {
    "on": "extra CPU weight buffers on (EDGECAP_EXTRA_BUFFERS)",
    "off": "extra CPU weight buffers off (EDGECAP_EXTRA_BUFFERS, or AMX: crash in this llama.cpp, "
    "#20824)",
    "measured": "weight repacking (extra CPU buffers) measured per model file at first load, "
    "the faster way kept (kernels.json; EDGECAP_EXTRA_BUFFERS overrides)",
}


def check_backend(settings: Settings) -> Check:
    from edgecap.engine import kernels
    from edgecap.engine.hardware import detect_backend

    backend = detect_backend()
    devices = ggml_devices()
    extra = kernels.policy(settings)
    simd = [f for f in SIMD_FEATURES if f in backend.features]
    data = {
        "backend": backend.name,
        "gpu_offload": backend.gpu_offload,
        "devices": devices,
        "simd": simd,
        "system_info": backend.system_info.strip(),
        "extra_cpu_buffers": extra,
        "extra_cpu_buffers_measured": kernels.remembered(settings),
    }
    offload = "GPU offload" if backend.gpu_offload else "no GPU offload"
    shown = ", ".join(f"{d['name']} ({d['description']})" for d in devices) or "not reported"
    detail = f"{backend.name}, {offload}; devices: {shown}; SIMD: {' '.join(simd) or 'none'}"
    detail += "; " + EXTRA_BUFFERS_DETAIL[extra]
    if platform.machine().lower() in {"x86_64", "amd64"} and "AVX2" not in simd:
        fix = (
            "this llama.cpp build uses no AVX2, so captions are very slow: rebuild "
            "llama-cpp-python on this machine (`pip install --force-reinstall --no-binary "
            f"llama-cpp-python llama-cpp-python=={PINNED_LLAMA_CPP_PYTHON}`)"
        )
        return Check("backend", "warn", detail, fix, data)
    return Check("backend", "ok", detail, data=data)


def check_threads(settings: Settings) -> Check:
    threads = settings.n_threads or physical_cores()
    source = "EDGECAP_N_THREADS" if settings.n_threads else "physical cores"
    return Check("threads", "ok", f"{threads} ({source})", data={"threads": threads})


def recommendations() -> dict[str, str]:
    """What model files suit this CPU (``doctor --output json`` carries it for scripts)."""
    advice = recommend()
    return {"mmproj_type": advice.mmproj_type, "mmproj_reason": advice.reason}


def check_files(settings: Settings) -> Check:
    """The projector type this CPU encodes fastest, against the default model's projector."""
    advice = recommend()
    detail = f"{advice.mmproj_type} projector recommended: {advice.reason}"
    data: dict[str, Any] = {"mmproj_type": advice.mmproj_type}
    try:
        default = Registry(settings).resolve(None)
        file_type = check_mmproj(default.mmproj).file_type
    except EdgecapError:  # no model, or a broken one: the models check reports that
        return Check("files", "ok", detail, data=data)
    installed = FILE_TYPE_NAMES.get(-1 if file_type is None else file_type, "other")
    data["installed_mmproj_type"] = installed
    detail += f"; {default.id}'s projector is {installed}"
    if installed in ("f16", "bf16") and installed != advice.mmproj_type:
        fix = (
            f"a {advice.mmproj_type} projector encodes faster here: convert one from the "
            f"checkpoint (`python tools/convert.py CHECKPOINT --outdir out --mmproj-type "
            f"{advice.mmproj_type}`) and `edgecap models register` it"
        )
        return Check("files", "warn", detail, fix, data)
    return Check("files", "ok", detail, data=data)


def check_projectors(settings: Settings) -> Check:
    """The default model's installed f16 and bf16 projectors, each timed on one encode."""
    from edgecap.engine.encode_timing import encode_seconds

    registry = Registry(settings)
    default = registry.resolve(None)
    projectors: dict[str, Any] = {}
    for status in registry.list():
        if not status.installed:
            continue
        files = registry.resolve(status.id)
        file_type = check_mmproj(files.mmproj).file_type
        kind = FILE_TYPE_NAMES.get(-1 if file_type is None else file_type)
        if kind in ("f16", "bf16") and kind not in projectors:
            try:
                check_pair(default.text, files.mmproj)
            except EdgecapError:
                continue  # another model's projector
            projectors[kind] = files.mmproj
    if len(projectors) < 2:
        have = f"only the {next(iter(projectors))}" if projectors else "no f16 or bf16"
        detail = f"{default.id}: {have} projector installed, nothing to compare"
        return Check("projectors", "skip", detail)
    seconds = encode_seconds(default.text, projectors, settings)
    faster = min(seconds, key=lambda k: seconds[k])
    advised = recommend().mmproj_type
    shown = ", ".join(f"{kind} {s:.2f} s" for kind, s in seconds.items())
    detail = f"one 448×448 encode: {shown}; {faster} is faster here"
    data = {"measured_encode_s": seconds, "measured_faster_mmproj_type": faster}
    if faster != advised:
        fix = (
            f"this CPU measured {faster} faster, against the {advised} recommendation: use {faster}"
        )
        return Check("projectors", "warn", detail, fix, data)
    return Check("projectors", "ok", detail + " (as recommended)", data=data)


def check_models(settings: Settings, *, verify: bool) -> Check:
    registry = Registry(settings)
    installed = [s for s in registry.list() if s.installed]
    data: dict[str, Any] = {"installed": [s.id for s in installed]}
    real = registry.catalog.default
    get_real = f"`edgecap models pull {real}` (about 6 GB), or offline `edgecap models import PATH`"
    try:
        default = registry.resolve(None)
    except ModelNotReady:
        return Check("models", "warn", "no model installed", f"install one: {get_real}", data)
    data["default"] = default.id
    detail = f"{len(installed)} installed; default {default.id}"
    if verify:
        report = registry.verify(default.id, progress=sys.stderr.isatty())
        error = report.error()
        if error is not None:
            return Check(
                "models", "fail", f"{detail}: its files fail verification", error.message, data
            )
        detail += " (files verified)"
    stand_ins = [s for s in installed if s.stands_in_for]
    if stand_ins:
        data["stand_ins"] = {s.id: s.stands_in_for for s in stand_ins}
        detail += "; " + "; ".join(
            f"{s.stands_in_for} is served by {s.id}, a local conversion standing in for the "
            "published files"
            for s in stand_ins
        )
    if default.random_weights:
        fix = f"for real captions: {get_real}"
        return Check("models", "warn", f"{detail}, whose weights are random", fix, data)
    return Check("models", "ok", detail, data=data)


def check_smoke(settings: Settings, model_name: str | None) -> Check:
    name = DEMO_MODEL if model_name is None else model_name or None
    try:
        model = Registry(settings).resolve(name)
    except ModelNotReady:
        if model_name is not None:
            raise
        fix = "run `edgecap demo` to build it, or smoke-test an installed model: --smoke-model"
        return Check("smoke", "warn", f"skipped: the demo model {DEMO_MODEL} is not built", fix)
    started = time.perf_counter()
    try:
        outcome = caption_sample(model, settings, max_tokens=SMOKE_MAX_TOKENS)
    except EdgecapError as exc:
        detail = f"captioning the sample with {model.id} failed: {exc.message}"
        return Check("smoke", "fail", detail, _smoke_fix(model.random_weights))
    result = outcome.result
    total = time.perf_counter() - started
    timings = {"load_model": round(total - result.compute_seconds, 3)}
    timings |= {stage: round(seconds, 3) for stage, seconds in result.timings.items()}
    stages = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in timings.items())
    data = {
        "model": model.id,
        "timings_s": timings,
        "image_tokens": result.image_tokens,
        "generated_tokens": result.generated_tokens,
        "text": result.text,
    }
    detail = f"{model.id} captioned the sample in {total:.2f} s ({stages})"
    return Check("smoke", "ok", detail, data=data)


def _smoke_fix(random_weights: bool) -> str:
    if random_weights:
        return (
            f"rebuild the demo model: `edgecap models rm {DEMO_MODEL} --yes`, then `edgecap demo`"
        )
    return "verify the model with `edgecap models verify NAME`, and reinstall it if that fails"


# ---------------------------------------------------------------------------- llama.cpp facts


def llama_cpp_build() -> str:
    """The vendored llama.cpp's commit and ggml version, e.g. ``0c1e570 (ggml 0.25.3)``."""
    lib = _libggml()
    if lib is None or not hasattr(lib, "ggml_commit"):
        return "unknown"
    import ctypes

    lib.ggml_commit.restype = lib.ggml_version.restype = ctypes.c_char_p
    return f"{lib.ggml_commit().decode()} (ggml {lib.ggml_version().decode()})"


def ggml_devices() -> list[dict[str, str]]:
    """The devices ggml registered (CPU, CUDA0, Metal, ...), if the library exposes them."""
    lib = _libggml()
    if lib is None or not hasattr(lib, "ggml_backend_dev_count"):
        return []
    import ctypes

    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for fn in (lib.ggml_backend_dev_name, lib.ggml_backend_dev_description):
        fn.restype, fn.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    devices = []
    for index in range(lib.ggml_backend_dev_count()):
        device = lib.ggml_backend_dev_get(index)
        name = lib.ggml_backend_dev_name(device).decode(errors="replace")
        description = lib.ggml_backend_dev_description(device).decode(errors="replace")
        devices.append({"name": name, "description": description})
    return devices


def _libggml() -> Any:
    # llama-cpp-python loads ggml itself and keeps the handle in a private module; there is no
    # public binding for these calls in 0.3.36. Anything unexpected means "not reported".
    try:
        from llama_cpp import _ggml

        return _ggml.libggml
    except (ImportError, AttributeError, OSError):
        return None
