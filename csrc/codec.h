// Canonical JPEG-LM codec on top of libjpeg's classic API.
//
// Pure algorithm: no Python types here. Every function is thread-safe (per-thread libjpeg
// objects are cached with thread_local) and reports failures by throwing jpeglm::JpegError;
// libjpeg itself never calls exit() and never prints (see the error manager in codec.cpp).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "jpeg_tables.h"

namespace jpeglm {

struct JpegError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// kMaxDimension (the largest width/height we accept on encode and decode) and kMaxSize (the
// largest canonical size) live in jpeg_tables.h.
// Largest decoded image we allocate (pixels); bigger headers are refused before allocation.
constexpr std::size_t kMaxPixels = std::size_t(1) << 28;  // 268M pixels (~805 MB RGB)

// ---------------------------------------------------------------------------------------------
// Encoding

// Encode an RGB image (rows of `width` * 3 bytes, `row_stride` bytes apart) as a baseline
// JPEG: islow DCT, the standard tables scaled to `quality` (1..100, libjpeg's
// jpeg_set_quality with force_baseline), 4:2:0 chroma, a restart marker after every
// `restart_blocks` MCUs (0: none). `stripped` suppresses the DQT/DHT segments (an
// "abbreviated image" stream, Pillow's streamtype=2); otherwise a complete JFIF file.
std::vector<uint8_t> encode_rgb(const uint8_t* rgb, int width, int height,
                                std::ptrdiff_t row_stride, int quality, bool stripped = true,
                                int restart_blocks = 1);

// Same as encode_rgb but appends into `out` (cleared first); lets batch callers reuse buffers.
void encode_rgb_into(std::vector<uint8_t>& out, const uint8_t* rgb, int width, int height,
                     std::ptrdiff_t row_stride, int quality, bool stripped, int restart_blocks);

// The tables-only stream (SOI, DQT x2, DHT x4, EOI) for `quality`: libjpeg's
// jpeg_write_tables, Pillow's streamtype=1.
const std::vector<uint8_t>& tables_stream(int quality);

// A complete JPEG: the tables segments of `quality` spliced after the SOI of a stripped stream.
// A stream that already has its tables is returned unchanged.
std::vector<uint8_t> with_tables(const uint8_t* data, std::size_t n, int quality);

// ---------------------------------------------------------------------------------------------
// Header inspection

struct HeaderInfo {
  int width = 0, height = 0, components = 0;
  bool has_dqt = false, has_dht = false;
  bool baseline = false;        // SOF0 or SOF1 (Huffman, sequential)
  int restart_interval = 0;     // DRI value, 0 when absent
  std::size_t scan_offset = 0;  // first byte of entropy-coded data after SOS, 0 if not found
};

// Walk the marker segments up to the first SOS. Never reads out of bounds; throws JpegError
// when the data does not start like a JPEG or a segment length runs past the end.
HeaderInfo parse_header(const uint8_t* data, std::size_t n);

// ---------------------------------------------------------------------------------------------
// Decoding

struct DecodeResult {
  // height * width * 3 bytes, RGB. Not value-initialised: allocation without a zero-fill pass.
  std::unique_ptr<uint8_t[]> pixels;
  int width = 0, height = 0;
  int valid_mcus = 0, total_mcus = 0;
  bool clean = true;  // no damage found
};

// Strict decode of a stripped stream (tables of `quality` are spliced) or a complete JPEG to
// RGB: islow IDCT, fancy upsampling (libjpeg's defaults, as Pillow). Any libjpeg error or
// corrupt-data warning throws JpegError carrying libjpeg's message.
DecodeResult decode(const uint8_t* data, std::size_t n, int quality);

// Tolerant decode. For baseline Huffman streams with restart intervals (the canonical format)
// every restart interval is checked on its own (Huffman codes, block counts, padding bits,
// RSTn order); valid intervals are decoded exactly, damaged or missing ones are mid-grey
// (DC = 0, no AC), and valid_mcus counts the MCUs that were valid. Streams without restart
// markers or non-baseline streams are decoded with libjpeg's own recovery; valid_mcus is then
// the leading MCUs before the first damage (baseline) or total/0 (other processes).
// When not even the header (up to SOS) can be read, the result is a grey
// `fallback_size` x `fallback_size` image with valid_mcus = 0 (fallback_size <= 0: throw).
DecodeResult decode_tolerant(const uint8_t* data, std::size_t n, int quality, int fallback_size);

// Count the valid restart intervals of a baseline stream's scan; exposed for tests/tools.
// Returns per-MCU validity flags (size = total MCUs).
std::vector<uint8_t> mcu_validity(const uint8_t* data, std::size_t n, int quality);

// ---------------------------------------------------------------------------------------------
// Coefficients

struct ComponentCoefficients {
  int blocks_high = 0, blocks_wide = 0;  // blocks in the component plane (padded to whole MCUs)
  int h_samp = 0, v_samp = 0, quant_table = 0;
  std::vector<int16_t> coefs;             // blocks_high * blocks_wide * 64, natural (row-major) order
  std::array<uint16_t, 64> quant{};       // the component's quantization table, natural order
};

// The quantized DCT coefficients exactly as libjpeg reads them (jpeg_read_coefficients), for
// every component. Strict: corrupt data throws JpegError.
std::vector<ComponentCoefficients> read_coefficients(const uint8_t* data, std::size_t n,
                                                     int quality);

}  // namespace jpeglm
