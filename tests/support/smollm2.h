// Where the tests find the real SmolLM2-135M-Instruct GGUF that deploy/fetch-model.sh fetches.
#pragma once

#include <string>

namespace starattn::testing {

constexpr const char* kSmolLM2File = "SmolLM2-135M-Instruct.Q4_1.gguf";

// $STARATTN_SMOLLM2_GGUF, else the fetch-model cache
// (${STARATTN_MODELS:-$HOME/.cache/starattn/models}/SmolLM2-135M-Instruct.Q4_1.gguf);
// empty when the file is not there.
std::string smollm2_gguf_path();

// What to tell someone whose machine lacks it.
std::string smollm2_missing_message();

}  // namespace starattn::testing
