"""The frozen encoder of the head mode, on a choice of CPU runtimes.

``frozen_encoder(model_dir, runtime=..., device=..., threads=..., cache_dir=...)`` returns a module that
:func:`dprad.nn.features.encoder_features` takes unchanged: called as ``encoder(input_ids=..,
attention_mask=..).last_hidden_state`` (B, T, H), with ``.config.hidden_size`` and ``.parameters()`` on
its device. Runtimes:

- ``torch``: the Hugging Face model in fp32 (bf16 autocast on a GPU): what :func:`dprad.nn.model.load_encoder`
  gives. The only runtime on a GPU.
- ``int8``: torch dynamic quantisation of every ``nn.Linear`` (int8 weights with one scale per output
  channel, activations quantised per call; fbgemm / x86 CPUs only, so CPU only). One scale per weight
  tensor distorted MiniLM's centred features far more (mean cosine to fp32 0.82 vs 0.94 on 100 IU X-ray
  reports).
- ``onnx``: the encoder exported once to ONNX (torch's TorchScript exporter, ``dynamo=False``: the dynamo
  exporter needs onnxscript, which dprad does not depend on) and run by ONNX Runtime, all graph
  optimisations on.
- ``onnx-int8``: that export with its MatMul weights quantised to int8, one scale per output channel, by
  ``onnxruntime.quantization.quantize_dynamic`` (activations quantised per call). Per channel: mean
  centred cosine to fp32 0.983 on 100 IU X-ray reports; per tensor with ``reduce_range`` 0.61, quint8
  weights 0.94.

Dynamic quantisation takes one scale per input tensor, so a batched call would make a report's features
depend on the reports padded beside it. The int8 runtimes therefore run every report of a batch on its own
(trailing padding dropped): a report's features are a function of that report alone, the same in training,
evaluation and serving, whatever the batch. Every runtime is deterministic for a given machine and thread
count (tests/modes/test_encoder_runtime.py).

``onnx-int8`` spreads a batch's reports over ``threads`` worker threads, each report on one core (ONNX
Runtime releases the GIL while it runs, and one session may be run from several threads). Measured side by
side (``python bench/encoder_threads.py``: 400 synthetic MIMIC-CXR reports, mean 133 tokens, 2 cores):
152.3 reports/s, against 117.6 for one report at a time on 2 intra-op threads through this wrapper (what
dprad did before), 144.7 for that on ONNX Runtime alone, and 92.9 on one core. Each report then runs
single-threaded, so its features are the same whatever the thread count.

A run's config says ``auto`` until planning resolves it (``dprad.stages.plan.encoder_runtime``):
``onnx-int8`` for a head on the CPU, ``torch`` on a GPU and for the modes that train the encoder; the
resolved name is what ``config.json`` records and what predict and serve load.

ONNX artefacts are built once per model and kept in ``cache_dir`` (a folder the caller chooses; never one
inside the repository), named by a SHA-256 of the model folder's files and the export settings, and written
atomically; nothing is ever downloaded. Without ``cache_dir`` they are built in a temporary folder that is
removed once the session has loaded them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dprad import io
from dprad.config import RUNTIMES  # torch, int8, onnx, onnx-int8: the config owns the vocabulary
from dprad.errors import DpradError

ONNX_OPSET = 17
EXPORT_VERSION = "2"  # bump when the export or quantisation recipe changes: a new cache key

RunFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B, T) ids, (B, T) mask -> (B, T, H)


class Hidden:
    """What a Hugging Face encoder returns, as far as dprad reads it."""

    def __init__(self, last_hidden_state: torch.Tensor) -> None:
        self.last_hidden_state = last_hidden_state  # (B, T, H)


class RuntimeEncoder(nn.Module):
    """A frozen encoder behind one forward function: ``.config`` is the model's, ``.parameters()`` yields an
    empty anchor on ``device``; ``rowwise`` runs each report alone (see the module docstring)."""

    def __init__(
        self,
        run: RunFn,
        config: Any,
        *,
        runtime: str,
        rowwise: bool,
        threads: int | None,
        workers: int = 1,
    ) -> None:
        super().__init__()
        self.config = config
        self.runtime = runtime
        self._run = run
        self._rowwise = rowwise
        self._threads = threads
        self.workers = max(1, workers)  # rowwise: reports run side by side on this many threads
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> Hidden:
        with torch_threads(self._threads), torch.inference_mode():
            if not self._rowwise:
                return Hidden(self._run(input_ids, attention_mask))
            # numpy, not torch: inference mode is per thread, and the workers write their own rows
            out = np.zeros((*input_ids.shape, int(self.config.hidden_size)), dtype=np.float32)  # (B, T, H)

            def row(i: int) -> None:
                real = torch.nonzero(attention_mask[i]).flatten()
                n = int(real[-1]) + 1 if len(real) else 1  # trailing padding dropped, positions unchanged
                out[i, :n] = self._run(input_ids[i : i + 1, :n], attention_mask[i : i + 1, :n])[0].numpy()

            rows = range(input_ids.shape[0])
            if self.workers == 1 or len(rows) < 2:
                for i in rows:
                    row(i)
            else:  # each worker writes its own rows of out; list() re-raises a worker's error here
                with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="dprad-encoder") as pool:
                    list(pool.map(row, rows))
            return Hidden(torch.from_numpy(out))


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for the block (unchanged when None)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(before)


def frozen_encoder(
    model_dir: str | Path,
    *,
    runtime: str = "torch",
    device: torch.device | str = "cpu",
    threads: int | None = None,
    cache_dir: str | Path | None = None,
) -> nn.Module:
    """The frozen encoder at ``model_dir`` on ``runtime`` (one of :data:`RUNTIMES`), in eval mode.

    ``threads``: intra-op threads of the runtime (None: torch's current setting, which dprad sets from
    ``--threads``). ``cache_dir``: where ONNX artefacts are kept between runs (see the module docstring).
    """
    from dprad.nn.model import load_encoder

    device = torch.device(device)
    if runtime not in RUNTIMES:
        raise DpradError(f"--encoder-runtime '{runtime}' must be one of {', '.join(RUNTIMES)}")
    if runtime != "torch" and device.type != "cpu":
        raise DpradError(f"--encoder-runtime {runtime} runs on the CPU only; on {device} use torch")
    model_dir = Path(model_dir)
    if runtime == "torch":
        return load_encoder(model_dir).eval().to(device)
    if runtime == "int8":
        model = load_encoder(model_dir).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notice (torchao is its successor)
            qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
            qmodel = torch.ao.quantization.quantize_dynamic(model, {nn.Linear: qconfig}, dtype=torch.qint8)

        def run_torch(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return qmodel(input_ids=ids, attention_mask=mask).last_hidden_state

        return RuntimeEncoder(run_torch, model.config, runtime=runtime, rowwise=True, threads=threads).eval()
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    quantized = runtime == "onnx-int8"
    # int8: one intra-op thread per report, ``threads`` reports at once (see the module docstring)
    cores = threads or torch.get_num_threads()
    session = onnx_session(
        model_dir, quantized=quantized, threads=1 if quantized else cores, cache_dir=cache_dir
    )

    def run_onnx(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feeds = {"input_ids": ids.numpy().astype(np.int64), "attention_mask": mask.numpy().astype(np.int64)}
        return torch.from_numpy(np.asarray(session.run(["last_hidden_state"], feeds)[0]))

    return RuntimeEncoder(
        run_onnx, config, runtime=runtime, rowwise=quantized, threads=None, workers=cores if quantized else 1
    ).eval()


def user_cache_dir() -> Path:
    """A per-user folder for ONNX artefacts (public: derived from the model alone, never from reports):
    ``$XDG_CACHE_HOME/dprad/encoders``, else ``~/.cache/dprad/encoders``."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "dprad" / "encoders"


def model_key(model_dir: Path, *, quantized: bool) -> str:
    """SHA-256 of the model folder's files (names and bytes) and the export recipe: the artefact's name."""
    import onnxruntime

    h = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(model_dir)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    recipe = f"{EXPORT_VERSION}\0{ONNX_OPSET}\0{torch.__version__}\0{quantized}\0"
    recipe += onnxruntime.__version__ if quantized else ""
    h.update(recipe.encode())
    return h.hexdigest()[:24]


def onnx_session(
    model_dir: Path, *, quantized: bool, threads: int | None, cache_dir: str | Path | None
) -> Any:
    """An ONNX Runtime session on the (cached) export of ``model``, int8 when ``quantized``."""
    try:
        import onnx  # noqa: F401 - torch's exporter and onnxruntime's quantiser write the files through it
        import onnxruntime as ort
    except ImportError as err:
        raise DpradError(
            f"--encoder-runtime onnx / onnx-int8 need the packages onnx and onnxruntime (dprad's own "
            f"dependencies; reinstall dprad): {err.name} is not installed"
        ) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.use_deterministic_compute = True
    providers = ["CPUExecutionProvider"]
    if cache_dir is not None:
        path = onnx_artefact(model_dir, quantized=quantized, folder=Path(cache_dir))
        return ort.InferenceSession(str(path), options, providers=providers)
    with tempfile.TemporaryDirectory(prefix="dprad-onnx-") as tmp:
        path = onnx_artefact(model_dir, quantized=quantized, folder=Path(tmp))
        return ort.InferenceSession(str(path), options, providers=providers)  # loaded: the file may go


def onnx_artefact(model_dir: Path, *, quantized: bool, folder: Path) -> Path:
    """``folder/encoder-{fp32|int8}-{key}.onnx``, built (atomically) unless it is there already: the fp32
    export of :func:`dprad.nn.model.load_encoder`'s model, then its quantised copy."""
    target = (
        folder / f"encoder-{'int8' if quantized else 'fp32'}-{model_key(model_dir, quantized=quantized)}.onnx"
    )
    if target.is_file():
        return target
    if not quantized:
        from dprad.nn.model import load_encoder

        model = load_encoder(model_dir).eval()
        io.write_with(target, lambda tmp: export_onnx(model, tmp))
        return target
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = onnx_artefact(model_dir, quantized=False, folder=folder)

    def quantize(tmp: Path) -> None:
        out = tmp.with_name(tmp.name + ".onnx")  # onnxruntime picks the format from the suffix
        quiet = logging.root.manager.disable
        logging.disable(logging.WARNING)  # onnxruntime's advice to pre-process, on the root logger
        try:
            quantize_dynamic(
                fp32, out, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"]
            )
            out.replace(tmp)
        finally:
            logging.disable(quiet)
            out.unlink(missing_ok=True)

    io.write_with(target, quantize)
    return target


class _LastHidden(nn.Module):
    """(ids, mask) -> (B, T, H): the positional signature the TorchScript exporter traces."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def export_onnx(model: nn.Module, path: Path) -> None:
    """Trace ``model`` once on a small padded batch; batch and length stay dynamic."""
    wrapper = _LastHidden(model).eval()  # eval: the exporter restores the wrapper's mode on the model
    ids = torch.full((2, 8), 1000, dtype=torch.long)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    dynamic = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on shape arithmetic that stays symbolic
        torch.onnx.export(
            wrapper,
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, "last_hidden_state": dynamic},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    model.eval()
