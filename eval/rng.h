// A small seeded random source for the task generators. The standard library's distributions
// and std::shuffle are implementation-defined, so the same seed would give different instances
// with another standard library; this one gives the same numbers everywhere.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace starattn::eval {

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}

  // splitmix64: a full-period 64-bit generator with well-mixed output.
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) for n >= 1 (the modulo bias is below 2^-40 for the n used here).
  uint64_t below(uint64_t n) { return next() % n; }
  // Uniform in [lo, hi].
  int64_t range(int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(below(static_cast<uint64_t>(hi - lo + 1)));
  }
  // Uniform in [0, 1).
  double unit() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }

  template <typename T>
  const T& pick(const std::vector<T>& items) {
    return items[below(items.size())];
  }
  template <typename T>
  void shuffle(std::vector<T>& items) {
    for (size_t i = items.size(); i > 1; --i) std::swap(items[i - 1], items[below(i)]);
  }

 private:
  uint64_t state_;
};

// Derives independent seeds from a base seed and labels (task name, length, sample index), so an
// instance does not depend on which other instances were generated before it.
inline uint64_t mix_seed(uint64_t seed, uint64_t value) {
  Rng r(seed ^ (value * 0xD6E8FEB86659FD93ull));
  r.next();
  return r.next();
}
inline uint64_t hash_label(const std::string& label) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a
  for (unsigned char c : label) h = (h ^ c) * 0x100000001B3ull;
  return h;
}

}  // namespace starattn::eval
