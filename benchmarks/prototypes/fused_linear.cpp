// PROTOTYPE, measured in benchmarks/bench_fused_prototype.py, not used by cimcal: one analog linear layer's
// forward (DAC, noisy pairs, tile GEMMs, ADC conversion) in one C++ call whose loops run on torch's own thread
// pool (at::parallel_for), against cimcal's numba kernels, which run on a second OpenMP pool with the tile
// matmuls and the Python glue between them. The same arithmetic as cimcal/analog/kernels.py for the benchmark
// chip's case (a staircase of at most 8 level steps, a full code table, no saturation mask, no pair compensation,
// finite inputs), so its outputs equal the kernels' bit for bit there (the script checks). Not covered: NaN and
// -0.0 weights, step tables, the mask, compensation, fixed instances, convolutions, the calibration (the script
// times the calibration's work separately). Built with -ffinite-math-only and -ffp-contract=off.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstdint>
#include <vector>
#include <cstring>

static inline uint64_t philox(uint64_t c0, uint64_t c1, uint64_t key) {
  const uint64_t M = 0xD256D193ull, W = 0x9E3779B9ull, MASK = 0xFFFFFFFFull;
  uint64_t x0 = c0, x1 = c1, k = key;
  for (int r = 0; r < 10; ++r) {
    uint64_t p = M * x0;
    x0 = ((p >> 32) ^ k ^ x1) & MASK;
    x1 = p & MASK;
    k = (k + W) & MASK;
  }
  return (x1 << 32) | x0;
}

static inline void fill_row_bits(uint64_t* words, int64_t groups, uint64_t row, uint64_t nonce, uint64_t key) {
  const uint64_t MASK = 0xFFFFFFFFull;
  uint64_t g0 = row * (uint64_t)groups;
  for (int64_t g = 0; g < groups; ++g) {
    uint64_t c = g0 + (uint64_t)g;
    words[g] = philox(c & MASK, (nonce + (c >> 32)) & MASK, key);
  }
}

constexpr int64_t BLOCK = 1 << 14;

// y (N, O) = sum over tiles of ADC(psum tile); returns (y, w_max)
std::vector<torch::Tensor> analog_linear(
    torch::Tensor x, torch::Tensor w, double in_scale, int64_t dac_bits,
    torch::Tensor level_steps /*float32 padded NaN, 8*/, int64_t level_base, torch::Tensor read_unit,
    uint64_t key, uint64_t nonce_w, uint64_t nonce_adc, int64_t tile_rows,
    torch::Tensor col_base, torch::Tensor col_gain, torch::Tensor col_offset, double factor,
    double grid_scale_d, double grid_shift_d, double interp_d, int64_t n_points, torch::Tensor codes) {
  const int64_t N = x.size(0), K = x.size(1), O = w.size(0);
  // DAC
  auto xq = torch::empty_like(x);
  {
    const float* xs = x.data_ptr<float>(); float* out = xq.data_ptr<float>();
    const float scale = (float)in_scale, q_max = (float)((1 << (dac_bits - 1)) - 1), step = 1.0f / q_max;
    at::parallel_for(0, N * K, BLOCK, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        float v = std::min(std::max(xs[i] / scale, -1.0f), 1.0f);
        out[i] = std::nearbyint(v * q_max) * step;
      }
    });
  }
  // pairs
  auto wn = torch::empty_like(w);
  auto w_max = torch::empty({O}, w.options());
  {
    const float* ws = w.data_ptr<float>(); float* out = wn.data_ptr<float>(); float* wm = w_max.data_ptr<float>();
    const float* ru = read_unit.data_ptr<float>(); const float* st = level_steps.data_ptr<float>();
    const float top = 1023.0f;
    const int64_t groups = (K + 3) / 4;
    const int64_t per = std::max<int64_t>(1, BLOCK / std::max<int64_t>(1, K));
    at::parallel_for(0, O, per, [&](int64_t b, int64_t e) {
      std::vector<uint64_t> words(groups);
      std::vector<int32_t> level(K);
      for (int64_t i = b; i < e; ++i) {
        const float* row = ws + i * K;
        uint32_t m = 0;
        for (int64_t j = 0; j < K; ++j) { uint32_t bits; std::memcpy(&bits, row + j, 4); m = std::max(m, bits & 0x7FFFFFFFu); }
        float mv; std::memcpy(&mv, &m, 4); mv = std::max(mv, 1e-12f);
        wm[i] = mv; const float s = 1.0f / mv;
        fill_row_bits(words.data(), groups, (uint64_t)i, nonce_w, key);
        const uint16_t* r16 = reinterpret_cast<const uint16_t*>(words.data());
        for (int64_t j = 0; j < K; ++j) {
          float xx = std::fabs(row[j] * s) * top + 0.5f;
          int32_t c = (int32_t)level_base;
          for (int k = 0; k < 8; ++k) c += (int32_t)(xx >= st[k]);
          level[j] = c;
        }
        float* __restrict o = out + i * K;
        const int32_t* __restrict lv = level.data();
        const float* __restrict rr = row;
        const float* __restrict rut = ru;
        for (int64_t j = 0; j < K; ++j) {
          int32_t r = r16[j];
          float ga = rut[lv[j] * 256 + (r & 255)], gi = rut[r >> 8];
          float v = rr[j] * s, d = ga - gi;
          uint32_t db, vb; std::memcpy(&db, &d, 4); std::memcpy(&vb, &v, 4);
          db ^= vb & 0x80000000u;
          std::memcpy(o + j, &db, 4);
        }
      }
    });
  }
  // tiles and ADC
  auto y = torch::empty({N, O}, x.options());
  auto psum = torch::empty({N, O}, x.options());
  const int32_t* cb = col_base.data_ptr<int32_t>(); const float* cg = col_gain.data_ptr<float>();
  const float* co = col_offset.data_ptr<float>(); const uint8_t* table = codes.data_ptr<uint8_t>();
  std::vector<float> deq_gain(O), deq_offset(O);
  const float* wmx = w_max.data_ptr<float>();
  for (int64_t j = 0; j < O; ++j) { float sc = wmx[j] * (float)factor; deq_gain[j] = cg[j] * sc; deq_offset[j] = co[j] * sc; }
  const float grid_scale = (float)grid_scale_d, grid_shift = (float)grid_shift_d, interp = (float)interp_d;
  const float last = (float)(n_points - 1);
  const int64_t groups = (O + 3) / 4;
  int64_t t = 0;
  for (int64_t start = 0; start < K; start += tile_rows, ++t) {
    const int64_t len = std::min(tile_rows, K - start);
    const bool first = start == 0;
    auto target = first ? y : psum;
    at::mm_out(target, xq.narrow(1, start, len), wn.narrow(1, start, len).t());
    const float* ps = target.data_ptr<float>(); float* acc = y.data_ptr<float>();
    const int64_t per = std::max<int64_t>(1, BLOCK / std::max<int64_t>(1, O));
    const uint64_t row0 = (uint64_t)(t * N);
    at::parallel_for(0, N, per, [&](int64_t b, int64_t e) {
      std::vector<uint64_t> words(groups);
      std::vector<int32_t> index_v(O);
      std::vector<float> code_v(O);
      int32_t* __restrict index = index_v.data();
      float* __restrict code = code_v.data();
      const float* __restrict dg = deq_gain.data();
      const float* __restrict dof = deq_offset.data();
      for (int64_t a = b; a < e; ++a) {
        fill_row_bits(words.data(), groups, row0 + (uint64_t)a, nonce_adc, key);
        const uint16_t* __restrict r16 = reinterpret_cast<const uint16_t*>(words.data());
        const float* __restrict p = ps + a * O;
        for (int64_t j = 0; j < O; ++j) {
          float q = p[j] * grid_scale + grid_shift;
          float position = std::fmin(std::fmax(q, 0.0f), last);
          int32_t below = (int32_t)position;
          uint16_t bits = r16[j];
          float high = (float)(bits >> 8);
          float threshold = (high + 0.5f) * interp + 128.0f * (1.0f - interp);
          int32_t point = below + (int32_t)(threshold < (position - (float)below) * 256.0f);
          index[j] = cb[j] + point * 256 + (int32_t)(bits & 255);
        }
        for (int64_t j = 0; j < O; ++j) { int32_t v; std::memcpy(&v, table + index[j], 4); code[j] = (float)(v & 255); }
        float* ac = acc + a * O;
        if (first) {
          for (int64_t j = 0; j < O; ++j) { float pj = p[j]; ac[j] = code[j] * dg[j] + dof[j] + (pj - pj); }
        } else {
          for (int64_t j = 0; j < O; ++j) { float pj = p[j]; ac[j] += code[j] * dg[j] + dof[j] + (pj - pj); }
        }
      }
    });
  }
  return {y, w_max};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("analog_linear", &analog_linear); }
