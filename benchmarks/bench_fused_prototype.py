"""What a fused C++ layer op would buy: the STE-LUT step with each layer's analog forward in one C++ call.

    python benchmarks/bench_fused_prototype.py [--models mlp cnn] [--rounds 45] [--threads 2] [--linear-only]

A measurement of a design option, not a part of cimcal. ``prototypes/fused_layer.cpp`` (compiled on first use
by ``torch.utils.cpp_extension``: needs g++ and ninja, ~35 s) does one layer's DAC, noisy pairs, tile GEMMs (or
the conv, on one tile) and ADC conversions in one call, its loops on torch's own thread pool. The script first
checks that a model whose layers go through it gives the same outputs, bit for bit, as the numba kernels (eval
mode, the benchmark chip), then times training steps of three models interleaved: ``clean``, ``ste`` (cimcal's
path) and ``ste-fused`` (the same model and stream through the prototype; ``--linear-only`` keeps the
convolutions on cimcal's path). The prototype leaves the layers' partial-sum calibration out; the script does the same work (a
sample of every tile's partial sums, selected and folded) on a stand-in buffer, so that the two paths cost the same
work.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_setup import MODELS, bench_profile, interleaved_medians, make_step  # noqa: E402

_SOURCE = Path(__file__).resolve().parent / "prototypes" / "fused_layer.cpp"


def _load():  # noqa: ANN202
    from torch.utils.cpp_extension import load

    flags = ["-O3", "-march=native", "-fopenmp", "-fno-trapping-math", "-ffinite-math-only", "-ffp-contract=off"]
    return load("cimcal_fused_layer_prototype", [str(_SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"])


def _constants(layer: torch.nn.Module, x: torch.Tensor) -> tuple:
    """(full scale, key, nonce of the weights, nonce of the conversions, level steps, first level, the ADC's
    factor, grid scale, grid shift, interpolation, grid points): what cimcal's path computes for one layer call."""
    from cimcal.analog import kernels

    _, full_scale = layer._input_dac(x, quantize=False)  # the running input calibration, as cimcal's path
    stream = kernels.draw_key(layer.generator)
    cache = layer.__dict__.setdefault("_fused_prototype", {})
    if not cache:
        _, base, short = kernels._level_plan(layer.lut_level_of_fine.numpy())
        if short.size == 0:  # the one-pass plan exists only for staircases of at most 8 steps
            raise SystemExit("the prototype needs a level staircase of at most 8 steps (the benchmark chip's)")
        cache["steps"], cache["base"] = torch.from_numpy(short.copy()).nan_to_num(1e30), int(base)
        # the prototype reads each code as 4 bytes at its index: 3 bytes of padding keep the last reads in bounds
        cache["codes"] = torch.cat([layer.adc_codes.reshape(-1), layer.adc_codes.new_zeros(3)])
    x_lo, x_hi, grid_x0, grid_step, n_points, interpolate = layer.adc_geometry
    psum_scale = float(layer.psum_scale_)
    half, center = 0.5 * (x_hi - x_lo), 0.5 * (x_hi + x_lo)
    return (full_scale, stream[0], kernels.substream(stream, 0)[1], kernels.substream(stream, 1)[1], cache["steps"],
            cache["base"], psum_scale / half * full_scale, half / (psum_scale * grid_step), (center - grid_x0) / grid_step,
            1.0 if interpolate else 0.0, n_points)


def _calibration_work(layer: torch.nn.Module, n_tiles: int, y: torch.Tensor) -> None:
    """The partial-sum calibration's work (a sample of every tile's partial sums, selected and folded into a
    running value) on a stand-in buffer of that size and a dummy state: the same cost, the layer's scale untouched."""
    from cimcal.analog import kernels
    from cimcal.analog.crossbar import sample_plan

    if not layer.training:
        return
    cache = layer._fused_prototype
    if cache.get("stand_in") is None or cache["stand_in"].numel() != n_tiles * y.numel():
        cache["stand_in"], cache["state"] = torch.randn(n_tiles * y.numel()), torch.zeros(())
    starts, line = sample_plan(cache["stand_in"].numel())
    cfg = layer.config
    kernels.running_kth(cache["stand_in"], starts, line, cfg.psum_percentile, cache["state"], cfg.calib_momentum, True)


def _fused_mvm(op):  # noqa: ANN001, ANN202
    """A ``simulate_mvm`` for an AnalogLinear (benchmark chip, default config) through the prototype."""

    def simulate_mvm(self, x2d: torch.Tensor, w2d: torch.Tensor, *_: object) -> tuple[torch.Tensor, None, None]:
        full_scale, key, nonce_w, nonce_adc, steps, base, *adc = _constants(self, x2d)
        cfg = self.config
        y, _ = op.analog_linear(
            x2d.contiguous(), w2d.detach().contiguous(), full_scale, cfg.dac_bits, steps, base, self.lut_read_unit, key,
            nonce_w, nonce_adc, cfg.tile_rows, self.adc_col_base, self.adc_col_gain, self.adc_col_offset, *adc,
            self._fused_prototype["codes"],
        )
        _calibration_work(self, -(-w2d.shape[1] // cfg.tile_rows), y)
        return y, None, None

    return simulate_mvm


def _fused_conv(op):  # noqa: ANN001, ANN202
    """A ``simulate_conv`` for an AnalogConv2d whose kernel patches fit one tile, through the prototype."""

    def simulate_conv(self, x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation, *_: object):  # noqa: ANN001, ANN202
        full_scale, key, nonce_w, nonce_adc, steps, base, *adc = _constants(self, x)
        y, _ = op.analog_conv(
            x.contiguous(), weight.detach().contiguous(), list(stride), list(padding), list(dilation), full_scale,
            self.config.dac_bits, steps, base, self.lut_read_unit, key, nonce_w, nonce_adc, self.adc_col_base,
            self.adc_col_gain, self.adc_col_offset, *adc, self._fused_prototype["codes"],
        )
        _calibration_work(self, 1, y)
        return y, None, None

    return simulate_conv


def _supported(layer: torch.nn.Module) -> bool:
    """The configuration the prototype reproduces: cimcal's defaults on the benchmark chip."""
    cfg = layer.config
    return (cfg.noise == "lut" and cfg.resample == "every_forward" and not cfg.pair_compensation
            and cfg.input_range is None and cfg.adc_grad == "identity" and cfg.grad_x_weight == "clean"
            and layer._programmed is None and layer.adc_codes is not None and layer.adc_steps is None
            and layer.lut_level_of_fine is not None and layer.adc_codes.dtype == torch.uint8)


def _fuse(model: torch.nn.Module, op, convs: bool) -> int:  # noqa: ANN001
    """Route the model's supported layers through the prototype; returns how many (the caller asserts > 0)."""
    from cimcal.analog.crossbar import conv_channel_tiles

    fused = 0
    for module in model.modules():
        if not hasattr(module, "config") or not _supported(module):
            continue
        if isinstance(module, torch.nn.Linear):
            module.simulate_mvm = types.MethodType(_fused_mvm(op), module)
            fused += 1
        elif convs and isinstance(module, torch.nn.Conv2d):
            _, in_ch, kh, kw = module.weight.shape
            if len(conv_channel_tiles(in_ch, kh * kw, module.config.tile_rows)) == 1 and module.groups == 1:
                module.simulate_conv = types.MethodType(_fused_conv(op), module)
                fused += 1
    return fused


def _check(model_name: str, profile, op, convs: bool) -> int:  # noqa: ANN001
    """Every fused layer's output equals cimcal's bit for bit (same weights, calibration and stream): one
    training-mode forward at batch 256 (the timed case) and one in eval mode. Returns the number of fused layers."""
    ref, fused = make_step("ste", model_name, profile), make_step("ste", model_name, profile)
    for _ in range(3):  # calibrate both on cimcal's path
        ref(), fused()
    a, b = ref.model, fused.model
    b.load_state_dict(a.state_dict())

    def same_calibration() -> None:  # the prototype leaves the partial-sum scale alone: copy it over each time
        for la, lb in zip(a.modules(), b.modules()):
            for name in ("psum_scale_", "input_range_"):
                if hasattr(la, name):
                    getattr(lb, name).copy_(getattr(la, name))

    n_fused = _fuse(b, op, convs)
    if n_fused == 0:
        raise SystemExit(f"{model_name}: no layer the prototype supports: nothing to compare")
    outputs: dict[str, list[torch.Tensor]] = {"cimcal": [], "fused": []}
    for label, model in (("cimcal", a), ("fused", b)):
        for module in model.modules():
            if hasattr(module, "config"):
                module.register_forward_hook(lambda _m, _i, out, label=label: outputs[label].append(out.detach().clone()))
    generator = next(m.generator for m in a.modules() if hasattr(m, "generator"))
    generator_b = next(m.generator for m in b.modules() if hasattr(m, "generator"))
    x = torch.rand((256, 784) if model_name == "mlp" else (256, 1, 8, 8), generator=torch.Generator().manual_seed(5))
    for mode in ("train", "eval"):
        a.train(mode == "train"), b.train(mode == "train")
        same_calibration()
        generator_b.set_state(generator.get_state())
        with torch.no_grad():
            a(x), b(x)
    pairs = list(zip(outputs["cimcal"], outputs["fused"]))
    for i, (ya, yb) in enumerate(pairs):
        if not torch.equal(ya, yb):
            raise SystemExit(f"{model_name}: analog layer output {i} differs from cimcal's (max {float((ya - yb).abs().max()):.3g})")
    print(f"{model_name}: {n_fused} layers fused; every analog layer's output equal to cimcal's, bit for bit "
          f"({len(pairs)} outputs: train and eval, batch 256)")
    return n_fused


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--rounds", type=int, default=45)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--linear-only", action="store_true", help="keep convolutions on cimcal's path")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    op = _load()
    profile = bench_profile()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for model_name in args.models:
        _check(model_name, profile, op, not args.linear_only)
        steps = {"clean": make_step("clean", model_name, profile), "ste": make_step("ste", model_name, profile),
                 "ste-fused": make_step("ste", model_name, profile)}
        for _ in range(3):
            steps["ste-fused"]()  # calibrated on cimcal's path first
        if _fuse(steps["ste-fused"].model, op, not args.linear_only) == 0:
            raise SystemExit(f"{model_name}: nothing fused")
        for step in steps.values():
            for _ in range(3):
                step()
        median = {name: seconds * 1e3 for name, seconds in interleaved_medians(steps, args.rounds).items()}
        print(f"{model_name}: clean {median['clean']:.1f} ms, ste {median['ste']:.1f} ms "
              f"({median['ste'] / median['clean']:.2f}x clean), ste-fused {median['ste-fused']:.1f} ms "
              f"({median['ste-fused'] / median['clean']:.2f}x clean); median of {args.rounds} interleaved rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
