// The only pybind11 file: buffers in (no copies), numpy/bytes out, the GIL released around
// every native loop. Each section binds one pure-C++ part of csrc/.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "codec.h"
#include "parallel.h"

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

// ----------------------------------------------------------------------------------------------
// Helpers

// A read-only view of a contiguous uint8 buffer (bytes, bytearray, memoryview, numpy...).
struct ByteView {
  const uint8_t* data = nullptr;
  std::size_t size = 0;
};

ByteView byte_view(const py::buffer_info& info, const char* what) {
  if (info.itemsize != 1)
    throw py::type_error(std::string(what) + ": expected a buffer of bytes (uint8), got item size " +
                         std::to_string(info.itemsize));
  // Contiguity: strides must describe a dense C-order buffer.
  py::ssize_t expect = 1;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] > 1 && info.strides[d] != expect)
      throw py::value_error(std::string(what) + ": buffer must be C-contiguous");
    expect *= info.shape[d];
  }
  ByteView v;
  v.data = static_cast<const uint8_t*>(info.ptr);
  v.size = static_cast<std::size_t>(info.size);
  return v;
}

// An RGB image view: HxWx3 uint8, channels and pixels dense, rows at any stride.
struct ImageView {
  const uint8_t* data = nullptr;
  int width = 0, height = 0;
  py::ssize_t row_stride = 0;
};

ImageView image_view(const py::buffer_info& info) {
  if (info.format != py::format_descriptor<uint8_t>::format() || info.itemsize != 1)
    throw py::type_error("image must be a uint8 array, got format '" + info.format + "'");
  if (info.ndim != 3 || info.shape[2] != 3)
    throw py::value_error("image must have shape (H, W, 3)");
  if (info.strides[2] != 1 || info.strides[1] != 3)
    throw py::value_error("image pixels must be contiguous (use numpy.ascontiguousarray)");
  if (info.strides[0] <= 0) throw py::value_error("image rows must have a positive stride");
  if (info.shape[0] > jpeglm::kMaxDimension || info.shape[1] > jpeglm::kMaxDimension)
    throw py::value_error("image too large for JPEG (max 65500 per side)");
  ImageView v;
  v.data = static_cast<const uint8_t*>(info.ptr);
  v.height = static_cast<int>(info.shape[0]);
  v.width = static_cast<int>(info.shape[1]);
  v.row_stride = info.strides[0];
  return v;
}

// Hands the pixel buffer to numpy without a copy: the capsule frees it with the array.
py::array_t<uint8_t> to_array(std::unique_ptr<uint8_t[]>&& pixels, int h, int w) {
  uint8_t* raw = pixels.get();
  py::capsule owner(raw, [](void* p) { delete[] static_cast<uint8_t*>(p); });
  pixels.release();  // owned by the capsule from here on
  return py::array_t<uint8_t>({py::ssize_t(h), py::ssize_t(w), py::ssize_t(3)},
                              {py::ssize_t(w) * 3, py::ssize_t(3), py::ssize_t(1)}, raw, owner);
}

py::bytes to_bytes(const std::vector<uint8_t>& v) {
  return py::bytes(reinterpret_cast<const char*>(v.data()), v.size());
}

py::tuple decode_result(jpeglm::DecodeResult&& r) {
  int h = r.height, w = r.width, valid = r.valid_mcus, total = r.total_mcus;
  bool clean = r.clean;
  return py::make_tuple(to_array(std::move(r.pixels), h, w), valid, total, clean);
}

// Runs fn(i) over a batch with the GIL released; errors name the failing item.
template <class Fn>
void run_batch(std::size_t n, int threads, Fn&& fn) {
  py::gil_scoped_release release;
  jpeglm::parallel_for(n, threads, [&](std::size_t i) {
    try {
      fn(i);
    } catch (const jpeglm::JpegError& e) {
      throw jpeglm::JpegError("item " + std::to_string(i) + ": " + e.what());
    }
  });
}

// ----------------------------------------------------------------------------------------------
// Codec

void bind_codec(py::module_& m) {
  py::register_exception<jpeglm::JpegError>(m, "JPEGError", PyExc_ValueError);

  m.def(
      "encode",
      [](py::buffer image, int quality, bool stripped, int restart_blocks) {
        py::buffer_info info = image.request();
        ImageView v = image_view(info);
        std::vector<uint8_t> out;
        {
          py::gil_scoped_release release;
          jpeglm::encode_rgb_into(out, v.data, v.width, v.height, v.row_stride, quality, stripped,
                                  restart_blocks);
        }
        return to_bytes(out);
      },
      "image"_a, "quality"_a = 25, "stripped"_a = true, "restart_blocks"_a = 1,
      "Encode an (H, W, 3) uint8 RGB array (4:2:0, islow DCT). stripped: no DQT/DHT.");

  m.def(
      "encode_batch",
      [](py::sequence images, int quality, int threads, bool stripped, int restart_blocks) {
        std::size_t n = py::len(images);
        std::vector<py::buffer_info> infos;
        std::vector<ImageView> views;
        infos.reserve(n);
        views.reserve(n);
        for (std::size_t i = 0; i < n; ++i) {
          infos.push_back(py::reinterpret_borrow<py::buffer>(images[i]).request());
          views.push_back(image_view(infos.back()));
        }
        std::vector<std::vector<uint8_t>> outs(n);
        run_batch(n, threads, [&](std::size_t i) {
          const ImageView& v = views[i];
          jpeglm::encode_rgb_into(outs[i], v.data, v.width, v.height, v.row_stride, quality,
                                  stripped, restart_blocks);
        });
        py::list result(n);
        for (std::size_t i = 0; i < n; ++i) result[i] = to_bytes(outs[i]);
        return result;
      },
      "images"_a, "quality"_a = 25, "threads"_a = 0, "stripped"_a = true,
      "restart_blocks"_a = 1, "Encode a sequence of (H, W, 3) uint8 arrays on all cores.");

  m.def(
      "encode_stack",
      [](py::buffer stack, int quality, int threads, bool stripped, int restart_blocks) {
        py::buffer_info info = stack.request();
        if (info.format != py::format_descriptor<uint8_t>::format() || info.ndim != 4 ||
            info.shape[3] != 3)
          throw py::value_error("stack must be a uint8 array of shape (N, H, W, 3)");
        if (info.strides[3] != 1 || info.strides[2] != 3 || info.strides[1] <= 0)
          throw py::value_error("stack pixels must be contiguous");
        if (info.shape[1] > jpeglm::kMaxDimension || info.shape[2] > jpeglm::kMaxDimension)
          throw py::value_error("image too large for JPEG (max 65500 per side)");
        std::size_t n = static_cast<std::size_t>(info.shape[0]);
        const auto* base = static_cast<const uint8_t*>(info.ptr);
        int h = static_cast<int>(info.shape[1]), w = static_cast<int>(info.shape[2]);
        std::vector<std::vector<uint8_t>> outs(n);
        run_batch(n, threads, [&](std::size_t i) {
          jpeglm::encode_rgb_into(outs[i], base + i * info.strides[0], w, h, info.strides[1],
                                  quality, stripped, restart_blocks);
        });
        py::list result(n);
        for (std::size_t i = 0; i < n; ++i) result[i] = to_bytes(outs[i]);
        return result;
      },
      "stack"_a, "quality"_a = 25, "threads"_a = 0, "stripped"_a = true, "restart_blocks"_a = 1,
      "Encode an (N, H, W, 3) uint8 array on all cores.");

  m.def(
      "tables",
      [](int quality) { return to_bytes(jpeglm::tables_stream(quality)); }, "quality"_a = 25,
      "The tables-only stream (SOI DQT DHT EOI) for a quality.");

  m.def(
      "with_tables",
      [](py::buffer data, int quality) {
        py::buffer_info info = data.request();
        ByteView v = byte_view(info, "data");
        std::vector<uint8_t> out;
        {
          py::gil_scoped_release release;
          out = jpeglm::with_tables(v.data, v.size, quality);
        }
        return to_bytes(out);
      },
      "data"_a, "quality"_a = 25, "Splice the tables of `quality` into a stripped stream.");

  m.def(
      "decode",
      [](py::buffer data, int quality, bool tolerant, int fallback_size) {
        py::buffer_info info = data.request();
        ByteView v = byte_view(info, "data");
        jpeglm::DecodeResult r;
        {
          py::gil_scoped_release release;
          r = tolerant ? jpeglm::decode_tolerant(v.data, v.size, quality, fallback_size)
                       : jpeglm::decode(v.data, v.size, quality);
        }
        return decode_result(std::move(r));
      },
      "data"_a, "quality"_a = 25, "tolerant"_a = false, "fallback_size"_a = 0,
      "Decode to (pixels[H, W, 3], valid_mcus, total_mcus, clean).");

  m.def(
      "decode_batch",
      [](py::sequence items, int quality, bool tolerant, int threads, int fallback_size) {
        std::size_t n = py::len(items);
        std::vector<py::buffer_info> infos;
        std::vector<ByteView> views;
        infos.reserve(n);
        views.reserve(n);
        for (std::size_t i = 0; i < n; ++i) {
          infos.push_back(py::reinterpret_borrow<py::buffer>(items[i]).request());
          views.push_back(byte_view(infos.back(), "item"));
        }
        std::vector<jpeglm::DecodeResult> results(n);
        run_batch(n, threads, [&](std::size_t i) {
          results[i] = tolerant
                           ? jpeglm::decode_tolerant(views[i].data, views[i].size, quality,
                                                     fallback_size)
                           : jpeglm::decode(views[i].data, views[i].size, quality);
        });
        py::list out(n);
        for (std::size_t i = 0; i < n; ++i) out[i] = decode_result(std::move(results[i]));
        return out;
      },
      "items"_a, "quality"_a = 25, "tolerant"_a = false, "threads"_a = 0,
      "fallback_size"_a = 0, "Decode a sequence of streams on all cores.");

  m.def(
      "parse_header",
      [](py::buffer data) {
        py::buffer_info info = data.request();
        ByteView v = byte_view(info, "data");
        jpeglm::HeaderInfo h = jpeglm::parse_header(v.data, v.size);
        py::dict d;
        d["width"] = h.width;
        d["height"] = h.height;
        d["components"] = h.components;
        d["has_tables"] = h.has_dqt;
        d["has_huffman_tables"] = h.has_dht;
        d["baseline"] = h.baseline;
        d["restart_interval"] = h.restart_interval;
        d["scan_offset"] = h.scan_offset;
        return d;
      },
      "data"_a, "Read the marker segments up to SOS.");

  m.def(
      "mcu_validity",
      [](py::buffer data, int quality) {
        py::buffer_info info = data.request();
        ByteView v = byte_view(info, "data");
        std::vector<uint8_t> valid;
        {
          py::gil_scoped_release release;
          valid = jpeglm::mcu_validity(v.data, v.size, quality);
        }
        py::array_t<bool> out(static_cast<py::ssize_t>(valid.size()));
        auto* p = out.mutable_data();
        for (std::size_t i = 0; i < valid.size(); ++i) p[i] = valid[i] != 0;
        return out;
      },
      "data"_a, "quality"_a = 25, "Per-MCU validity of a baseline stream with restart markers.");

  m.def(
      "coefficients",
      [](py::buffer data, int quality) {
        py::buffer_info info = data.request();
        ByteView v = byte_view(info, "data");
        std::vector<jpeglm::ComponentCoefficients> comps;
        {
          py::gil_scoped_release release;
          comps = jpeglm::read_coefficients(v.data, v.size, quality);
        }
        py::list out;
        for (auto& c : comps) {
          py::array_t<int16_t> coefs({py::ssize_t(c.blocks_high), py::ssize_t(c.blocks_wide),
                                      py::ssize_t(8), py::ssize_t(8)});
          std::memcpy(coefs.mutable_data(), c.coefs.data(), c.coefs.size() * sizeof(int16_t));
          py::array_t<uint16_t> quant({py::ssize_t(8), py::ssize_t(8)});
          std::memcpy(quant.mutable_data(), c.quant.data(), 64 * sizeof(uint16_t));
          py::dict d;
          d["coefficients"] = coefs;
          d["quant"] = quant;
          d["h_samp"] = c.h_samp;
          d["v_samp"] = c.v_samp;
          d["quant_table"] = c.quant_table;
          out.append(d);
        }
        return out;
      },
      "data"_a, "quality"_a = 25,
      "Quantized DCT coefficients per component, as libjpeg reads them (natural order).");

  m.def("default_threads", &jpeglm::default_threads);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "jpeglm native core: canonical JPEG codec (libjpeg), BPE tokenizer";
  bind_codec(m);
}
