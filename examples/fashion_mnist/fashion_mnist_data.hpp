#pragma once
// Fashion-MNIST from the IDX files of the dataset-fashion-mnist package (gzip-compressed),
// held in memory as bytes (normalized to floats batch by batch) and int64 labels.

#include <keel/data/dataset.hpp>

#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace fashion_mnist {

/// The uncompressed size a gzip file states in its last four bytes (modulo 2^32), used only to
/// size the buffer; 0 for a file that is not gzip or cannot be read.
inline std::size_t gzip_size_hint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char magic[2] = {0, 0};
  if (!in.read(reinterpret_cast<char*>(magic), 2) || magic[0] != 0x1f || magic[1] != 0x8b) return 0;
  unsigned char size[4] = {0, 0, 0, 0};
  if (!in.seekg(-4, std::ios::end) || !in.read(reinterpret_cast<char*>(size), 4)) return 0;
  return std::size_t(size[0]) | (std::size_t(size[1]) << 8) | (std::size_t(size[2]) << 16) |
         (std::size_t(size[3]) << 24);
}

/// Reads a whole gzip file (or a plain file: zlib reads those transparently), straight into one
/// buffer of the stated size: growing a vector 64 kB at a time copied and faulted in twice the
/// 47 MB of the training images, a third of the example's start-up.
inline std::vector<unsigned char> read_gzip(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file)
    throw std::runtime_error("cannot open '" + path + "' (install dataset-fashion-mnist or pass --data DIR)");
  gzbuffer(file, 1 << 18);
  // One byte more than stated, so that reaching the end needs no second buffer.
  std::vector<unsigned char> bytes(gzip_size_hint(path) + 1);
  std::size_t used = 0;
  int n = 0;
  for (;;) {
    if (used == bytes.size()) bytes.resize(2 * bytes.size());
    const auto room = static_cast<unsigned>(std::min<std::size_t>(bytes.size() - used, 1u << 30));
    if ((n = gzread(file, bytes.data() + used, room)) <= 0) break;
    used += static_cast<std::size_t>(n);
  }
  bytes.resize(used);
  int error = Z_OK;
  const char* message = gzerror(file, &error);
  gzclose(file);
  if (n < 0 || (error != Z_OK && error != Z_STREAM_END))
    throw std::runtime_error("cannot decompress '" + path + "': " + message);
  return bytes;
}

inline std::uint32_t big_endian_u32(const std::vector<unsigned char>& b, std::size_t at) {
  return (std::uint32_t(b[at]) << 24) | (std::uint32_t(b[at + 1]) << 16) | (std::uint32_t(b[at + 2]) << 8) |
         std::uint32_t(b[at + 3]);
}

/// An IDX file's dimensions and the offset of its data, after checking the magic number.
inline std::vector<std::int64_t> idx_dims(const std::vector<unsigned char>& bytes, std::uint32_t expected_magic,
                                          const std::string& path) {
  if (bytes.size() < 4 || big_endian_u32(bytes, 0) != expected_magic)
    throw std::runtime_error("'" + path + "' is not an IDX file of the expected kind");
  const std::size_t rank = expected_magic & 0xff;
  if (bytes.size() < 4 + 4 * rank) throw std::runtime_error("'" + path + "' is truncated");
  std::vector<std::int64_t> dims;
  std::uint64_t count = 1;
  for (std::size_t i = 0; i < rank; ++i) {
    dims.push_back(big_endian_u32(bytes, 4 + 4 * i));
    count *= static_cast<std::uint64_t>(dims.back());
  }
  if (bytes.size() != 4 + 4 * rank + count)
    throw std::runtime_error("'" + path + "' has " + std::to_string(bytes.size()) + " bytes, expected " +
                             std::to_string(4 + 4 * rank + count));
  return dims;
}

/// One split ("train" or "t10k") of Fashion-MNIST, optionally a contiguous range of it.
class Dataset {
 public:
  Dataset(const std::string& directory, const std::string& split) {
    const std::string image_path = directory + "/" + split + "-images-idx3-ubyte.gz";
    const std::string label_path = directory + "/" + split + "-labels-idx1-ubyte.gz";
    const auto image_bytes = read_gzip(image_path);
    const auto label_bytes = read_gzip(label_path);
    const auto image_dims = idx_dims(image_bytes, 0x00000803, image_path);
    const auto label_dims = idx_dims(label_bytes, 0x00000801, label_path);
    if (image_dims[0] != label_dims[0])
      throw std::runtime_error("'" + image_path + "' and '" + label_path + "' hold different sample counts");
    // The pixels stay bytes until a batch is drawn (47 MB, not 188 MB of floats to fault in at
    // every start): normalizing element by element gives the same floats either way.
    images_ = torch::from_blob(const_cast<unsigned char*>(image_bytes.data()) + 16,
                               {image_dims[0], 1, image_dims[1], image_dims[2]}, torch::kUInt8)
                  .clone();
    labels_ = torch::from_blob(const_cast<unsigned char*>(label_bytes.data()) + 8, {label_dims[0]}, torch::kUInt8)
                  .to(torch::kInt64);
  }

  /// Samples [begin, end) of this dataset, sharing memory.
  Dataset slice(std::int64_t begin, std::int64_t end) const {
    Dataset out(*this);
    out.images_ = images_.slice(0, begin, end);
    out.labels_ = labels_.slice(0, begin, end);
    return out;
  }

  /// Turns on augmentation for training batches: each image shifted by up to 2 pixels in each
  /// direction (zero padding) and flipped left-right with probability 1/2, drawn from the
  /// sample's own generator, so the augmented batch is the same under any worker count or resume.
  Dataset& augment(bool on) {
    augment_ = on;
    return *this;
  }

  std::size_t size() const { return static_cast<std::size_t>(labels_.size(0)); }
  keel::data::Example get(std::size_t index) const {
    return {normalized(images_[static_cast<std::int64_t>(index)]), labels_[static_cast<std::int64_t>(index)]};
  }
  keel::data::Example get_batch(const std::vector<std::int64_t>& indices, const keel::data::SampleContext& ctx) const {
    const auto index = torch::from_blob(const_cast<std::int64_t*>(indices.data()),
                                        {static_cast<std::int64_t>(indices.size())}, torch::kInt64);
    torch::Tensor images = normalized(images_.index_select(0, index));
    if (augment_ && ctx.training()) images = augmented(images, indices, ctx);
    return {images, labels_.index_select(0, index)};
  }

  /// Every image as the normalized floats the models see (a new tensor), and the labels.
  torch::Tensor images() const { return normalized(images_); }
  const torch::Tensor& labels() const { return labels_; }

 private:
  /// Bytes 0-255 to the normalized floats the models see.
  static torch::Tensor normalized(const torch::Tensor& pixels) {
    return pixels.to(torch::kFloat32).div_(255.0).sub_(kMean).div_(kStd);
  }

  static torch::Tensor augmented(const torch::Tensor& images, const std::vector<std::int64_t>& indices,
                                 const keel::data::SampleContext& ctx) {
    constexpr std::int64_t pad = 2;
    const double background = (0.0 - kMean) / kStd;  // a black pixel after normalization
    const torch::Tensor padded = torch::constant_pad_nd(images, {pad, pad, pad, pad}, background);
    torch::Tensor out = torch::empty_like(images);
    for (std::size_t i = 0; i < indices.size(); ++i) {
      keel::data::SplitMix64 rng(ctx.sample_seed(indices[i]));
      const auto dy = static_cast<std::int64_t>(rng.below(2 * pad + 1));
      const auto dx = static_cast<std::int64_t>(rng.below(2 * pad + 1));
      torch::Tensor crop = padded[static_cast<std::int64_t>(i)].narrow(1, dy, 28).narrow(2, dx, 28);
      if (rng.below(2) == 1) crop = crop.flip({2});
      out[static_cast<std::int64_t>(i)].copy_(crop);
    }
    return out;
  }

  Dataset() = default;
  static constexpr double kMean = 0.2860;  // of the training images
  static constexpr double kStd = 0.3530;
  torch::Tensor images_;
  torch::Tensor labels_;
  bool augment_ = false;
};

}  // namespace fashion_mnist
