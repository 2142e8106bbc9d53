#include "tests/support/smollm2.h"

#include <cstdlib>
#include <filesystem>

namespace starattn::testing {
namespace {

std::string candidate_path() {
  if (const char* p = std::getenv("STARATTN_SMOLLM2_GGUF"); p && *p) return p;
  std::string dir;
  if (const char* m = std::getenv("STARATTN_MODELS"); m && *m)
    dir = m;
  else if (const char* home = std::getenv("HOME"); home && *home)
    dir = std::string(home) + "/.cache/starattn/models";
  return dir.empty() ? "" : dir + "/" + kSmolLM2File;
}

}  // namespace

std::string smollm2_gguf_path() {
  const std::string p = candidate_path();
  std::error_code ec;
  return !p.empty() && std::filesystem::is_regular_file(p, ec) ? p : "";
}

std::string smollm2_missing_message() {
  return "SmolLM2 GGUF not found at '" + candidate_path() +
         "': run deploy/fetch-model.sh (or set STARATTN_SMOLLM2_GGUF)";
}

}  // namespace starattn::testing
