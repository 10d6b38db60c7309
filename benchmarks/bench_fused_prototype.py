"""What a fused C++ layer op would buy: the STE-LUT step with its linear layers' analog forward in one C++ call.

    python benchmarks/bench_fused_prototype.py [--models mlp cnn] [--rounds 45] [--threads 2]

A measurement of a design option, not a part of cimcal. ``prototypes/fused_linear.cpp`` (compiled on first use
by ``torch.utils.cpp_extension``: needs g++ and ninja, ~35 s) does one linear layer's DAC, noisy pairs, tile
GEMMs and ADC conversions in one call, its loops on torch's own thread pool. The script first checks that a
model whose linear layers go through it gives the same outputs, bit for bit, as the numba kernels (eval mode, the
benchmark chip), then times training steps of three models interleaved: ``clean``, ``ste`` (cimcal's path) and
``ste-fused`` (the same model and stream, its linear layers through the prototype; convolutions stay on
cimcal's path). The prototype leaves the layers' partial-sum calibration out; the script does the same work (a
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

_SOURCE = Path(__file__).resolve().parent / "prototypes" / "fused_linear.cpp"


def _load():  # noqa: ANN202
    from torch.utils.cpp_extension import load

    flags = ["-O3", "-march=native", "-fopenmp", "-fno-trapping-math", "-ffinite-math-only", "-ffp-contract=off"]
    return load("cimcal_fused_linear_prototype", [str(_SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"])


def _fused_mvm(op):  # noqa: ANN001, ANN202
    """A ``simulate_mvm`` for an AnalogLinear (benchmark chip, default config) through the prototype."""
    from cimcal.analog import kernels
    from cimcal.analog.crossbar import sample_plan

    def simulate_mvm(self, x2d: torch.Tensor, w2d: torch.Tensor, *_: object) -> tuple[torch.Tensor, None, None]:
        cfg = self.config
        _, full_scale = self._input_dac(x2d, quantize=False)  # the running input calibration, as cimcal's path
        stream = kernels.draw_key(self.generator)
        nonce_w, nonce_adc = kernels.substream(stream, 0)[1], kernels.substream(stream, 1)[1]
        cache = self.__dict__.setdefault("_fused_prototype", {})
        if not cache:
            _, base, short = kernels._level_plan(self.lut_level_of_fine.numpy())
            if short.size != 8:
                raise SystemExit("the prototype needs a staircase of at most 8 level steps (the benchmark chip's)")
            cache["steps"], cache["base"] = torch.from_numpy(short.copy()).nan_to_num(1e30), int(base)
        x_lo, x_hi, grid_x0, grid_step, n_points, interpolate = self.adc_geometry
        psum_scale = float(self.psum_scale_)
        half, center = 0.5 * (x_hi - x_lo), 0.5 * (x_hi + x_lo)
        y, _ = op.analog_linear(
            x2d.contiguous(), w2d.detach().contiguous(), full_scale, cfg.dac_bits, cache["steps"], cache["base"],
            self.lut_read_unit, stream[0], nonce_w, nonce_adc, cfg.tile_rows, self.adc_col_base, self.adc_col_gain,
            self.adc_col_offset, psum_scale / half * full_scale, half / (psum_scale * grid_step),
            (center - grid_x0) / grid_step, 1.0 if interpolate else 0.0, n_points, self.adc_codes,
        )
        if self.training:  # the calibration's work on a stand-in of every tile's partial sums; the scale untouched
            n_tiles = -(-w2d.shape[1] // cfg.tile_rows)
            if cache.get("stand_in") is None or cache["stand_in"].numel() != n_tiles * y.numel():
                cache["stand_in"], cache["state"] = torch.randn(n_tiles * y.numel()), torch.zeros(())
            starts, line = sample_plan(cache["stand_in"].numel())
            kernels.running_kth(cache["stand_in"], starts, line, cfg.psum_percentile, cache["state"], cfg.calib_momentum, True)
        return y, None, None

    return simulate_mvm


def _fuse(model: torch.nn.Module, op) -> None:  # noqa: ANN001
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and hasattr(module, "simulate_mvm"):
            module.simulate_mvm = types.MethodType(_fused_mvm(op), module)


def _check(model_name: str, profile, op) -> None:  # noqa: ANN001
    """The fused model's eval outputs equal cimcal's, bit for bit (same weights, calibration and stream)."""
    ref, fused = make_step("ste", model_name, profile), make_step("ste", model_name, profile)
    for _ in range(3):  # calibrate both on cimcal's path
        ref(), fused()
    a, b = ref.model, fused.model
    b.load_state_dict(a.state_dict())
    for la, lb in zip(a.modules(), b.modules()):
        for name in ("psum_scale_", "input_range_"):
            if hasattr(la, name):
                getattr(lb, name).copy_(getattr(la, name))
    _fuse(b, op)
    a.eval(), b.eval()
    generator = next(m.generator for m in a.modules() if hasattr(m, "generator"))
    generator_b = next(m.generator for m in b.modules() if hasattr(m, "generator"))
    generator_b.set_state(generator.get_state())
    x = torch.rand((64, 784) if model_name == "mlp" else (64, 1, 8, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ya, yb = a(x), b(x)
    if not torch.equal(ya, yb):
        raise SystemExit(f"{model_name}: the prototype's outputs differ from cimcal's (max {float((ya - yb).abs().max()):.3g})")
    print(f"{model_name}: outputs equal to cimcal's, bit for bit (eval, 64 inputs)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--rounds", type=int, default=45)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    op = _load()
    profile = bench_profile()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for model_name in args.models:
        _check(model_name, profile, op)
        steps = {"clean": make_step("clean", model_name, profile), "ste": make_step("ste", model_name, profile),
                 "ste-fused": make_step("ste", model_name, profile)}
        for _ in range(3):
            steps["ste-fused"]()  # calibrated on cimcal's path first
        _fuse(steps["ste-fused"].model, op)
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
