// Building BpeVocab from a Hugging Face tokenizer.json or from GGUF tokenizer metadata, and
// choosing the tokenizer for a model path.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "runtime/bpe_tokenizer.h"
#include "runtime/gguf.h"

namespace starattn {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const char* const kMetaspace = "\xE2\x96\x81";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

[[noreturn]] void fail(const std::string& path, const std::string& field, const std::string& problem) {
  throw std::runtime_error(path + ": " + field + ": " + problem);
}

std::string type_of(const json& j) { return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : ""; }

// A pre_tokenizer object (possibly a Sequence) appended to the vocabulary's steps.
void parse_pre_tokenizer(const std::string& path, const json& p, BpeVocab& v) {
  if (p.is_null()) return;
  const std::string type = type_of(p);
  const std::string field = "pre_tokenizer " + type;
  if (type == "Sequence") {
    if (!p.contains("pretokenizers") || !p["pretokenizers"].is_array())
      fail(path, field, "has no \"pretokenizers\" array");
    for (const json& step : p["pretokenizers"]) parse_pre_tokenizer(path, step, v);
  } else if (type == "ByteLevel") {
    v.byte_level = true;
    if (p.value("add_prefix_space", false)) v.pre_steps.push_back(PreStep::prefix_space);
    if (p.value("use_regex", true)) v.pre_steps.push_back(PreStep::gpt2);
  } else if (type == "Digits") {
    v.pre_steps.push_back(p.value("individual_digits", false) ? PreStep::digits_individual : PreStep::digits);
  } else if (type == "Split") {
    const json& pattern = p.value("pattern", json());
    const std::string behavior = p.value("behavior", std::string());
    if (behavior != "Isolated" || p.value("invert", false))
      fail(path, field, "behavior \"" + behavior + "\" (invert " + (p.value("invert", false) ? "true" : "false") +
                            ") is not supported (supported: Isolated, not inverted)");
    if (!pattern.is_object() || !pattern.contains("Regex") || !pattern["Regex"].is_string())
      fail(path, field, "only Regex patterns are supported, got " + pattern.dump());
    PreStep step;
    if (!pre_step_from_regex(pattern["Regex"].get<std::string>(), step))
      fail(path, field, "regex " + pattern["Regex"].dump() +
                            " is not one we implement (GPT-2, Llama 3 and Qwen2 patterns)");
    v.pre_steps.push_back(step);
  } else if (type == "Metaspace") {
    if (p.value("replacement", std::string(kMetaspace)) != kMetaspace)
      fail(path, field, "only the U+2581 replacement is supported");
    if (p.value("split", false)) fail(path, field, "split=true is not supported");
    v.spaces_to_metaspace = true;
    std::string scheme = p.value("prepend_scheme", std::string());
    if (scheme.empty()) scheme = p.value("add_prefix_space", true) ? "always" : "never";
    v.space_prefix = scheme == "never" ? SpacePrefix::none : scheme == "first" ? SpacePrefix::first : SpacePrefix::always;
  } else {
    fail(path, "pre_tokenizer", "type \"" + type + "\" is not supported (supported: ByteLevel, "
                                "Digits, Split, Metaspace, Sequence)");
  }
}

void parse_normalizer(const std::string& path, const json& n, BpeVocab& v) {
  if (n.is_null()) return;
  const std::string type = type_of(n);
  if (type == "Sequence") {
    for (const json& step : n.value("normalizers", json::array())) parse_normalizer(path, step, v);
  } else if (type == "NFC") {
    // Text reaching us is nearly always NFC already; we do not carry composition tables.
  } else if (type == "Prepend" && n.value("prepend", std::string()) == kMetaspace) {
    v.space_prefix = SpacePrefix::always;
  } else if (type == "Replace" && n.contains("pattern") && n["pattern"].value("String", std::string()) == " " &&
             n.value("content", std::string()) == kMetaspace) {
    v.spaces_to_metaspace = true;
  } else {
    fail(path, "normalizer", n.dump().substr(0, 120) + " is not supported (supported: NFC, "
                             "Prepend(U+2581), Replace(' ', U+2581))");
  }
}

// bos/eos from config.json and generation_config.json beside the tokenizer, when present.
void read_special_ids(const fs::path& dir, BpeVocab& v) {
  for (const char* name : {"config.json", "generation_config.json"}) {
    std::ifstream in(dir / name);
    if (!in) continue;
    const json j = json::parse(in, nullptr, false);
    if (j.is_discarded() || !j.is_object()) continue;
    if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer())
      v.bos_id = j["bos_token_id"].get<int32_t>();
    if (j.contains("eos_token_id")) {
      const json& e = j["eos_token_id"];
      std::vector<int32_t> ids;
      if (e.is_number_integer()) ids.push_back(e.get<int32_t>());
      if (e.is_array())
        for (const json& x : e)
          if (x.is_number_integer()) ids.push_back(x.get<int32_t>());
      if (!ids.empty()) v.eos_ids = ids;
    }
  }
}

}  // namespace

std::unique_ptr<BpeTokenizer> load_tokenizer_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw std::runtime_error(path + ": not valid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object())
    throw std::runtime_error(path + ": no \"model\" object (not a tokenizer.json?)");
  const json& m = j["model"];
  const std::string type = m.value("type", std::string("BPE"));
  if (type != "BPE")
    fail(path, "model.type", "\"" + type + "\" is not supported (supported: BPE)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (m.contains(key) && !m[key].is_null() && m[key] != "")
      fail(path, std::string("model.") + key, "is not supported");

  BpeVocab v;
  v.source = path;
  v.byte_level = false;
  if (!m.contains("vocab") || !m["vocab"].is_object()) fail(path, "model.vocab", "missing or not an object");
  for (const auto& [token, id] : m["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > (1 << 24))
      fail(path, "model.vocab", "token \"" + token + "\" has id " + id.dump());
    const auto index = static_cast<size_t>(id.get<int64_t>());
    if (index >= v.tokens.size()) v.tokens.resize(index + 1);
    v.tokens[index] = token;
  }
  for (const json& merge : m.value("merges", json::array())) {
    if (merge.is_string()) {
      const std::string s = merge.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos) fail(path, "model.merges", "entry \"" + s + "\" is not \"a b\"");
      v.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      v.merges.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());
    } else {
      fail(path, "model.merges", "entry " + merge.dump() + " is neither \"a b\" nor [a, b]");
    }
  }
  v.byte_fallback = m.value("byte_fallback", false);
  v.ignore_merges = m.value("ignore_merges", false);
  if (m.contains("unk_token") && m["unk_token"].is_string()) {
    const std::string unk = m["unk_token"].get<std::string>();
    for (size_t i = 0; i < v.tokens.size(); ++i)
      if (v.tokens[i] == unk) v.unk_id = static_cast<int32_t>(i);
  }
  for (const json& t : j.value("added_tokens", json::array())) {
    if (!t.is_object() || !t.contains("id") || !t.contains("content") || !t["content"].is_string())
      fail(path, "added_tokens", "entry " + t.dump().substr(0, 80) + " needs id and content");
    AddedToken a;
    a.id = t["id"].get<int32_t>();
    a.content = t["content"].get<std::string>();
    a.special = t.value("special", false);
    a.lstrip = t.value("lstrip", false);
    a.rstrip = t.value("rstrip", false);
    a.single_word = t.value("single_word", false);
    v.added.push_back(a);
  }
  parse_normalizer(path, j.value("normalizer", json()), v);
  parse_pre_tokenizer(path, j.value("pre_tokenizer", json()), v);

  // A template post-processor that starts with a special token adds BOS (Llama 3).
  const json& post = j.value("post_processor", json());
  std::string bos_text;
  auto template_bos = [&](const json& p) {
    if (type_of(p) == "TemplateProcessing" && p.contains("single") && p["single"].is_array() &&
        !p["single"].empty() && p["single"][0].contains("SpecialToken"))
      bos_text = p["single"][0]["SpecialToken"].value("id", std::string());
  };
  template_bos(post);
  if (type_of(post) == "Sequence")
    for (const json& p : post.value("processors", json::array())) template_bos(p);

  const fs::path dir = fs::path(path).parent_path();
  read_special_ids(dir, v);
  auto tok = std::make_unique<BpeTokenizer>(std::move(v));
  if (!bos_text.empty()) {
    BpeVocab copy = tok->vocab();
    copy.add_bos = true;
    if (copy.bos_id < 0) copy.bos_id = tok->token_id(bos_text);
    tok = std::make_unique<BpeTokenizer>(std::move(copy));
  }
  return tok;
}

std::unique_ptr<BpeTokenizer> load_gguf_tokenizer(const GgufFile& f) {
  const std::string model = f.get_string("tokenizer.ggml.model", "");
  if (model.empty())
    throw std::runtime_error(f.path() + ": no tokenizer metadata (tokenizer.ggml.model is missing)");
  BpeVocab v;
  v.source = f.path();
  v.tokens = f.get_strings("tokenizer.ggml.tokens");
  if (v.tokens.empty()) throw std::runtime_error(f.path() + ": tokenizer.ggml.tokens is missing or empty");
  const std::vector<double> types = f.get_numbers("tokenizer.ggml.token_type");
  if (!types.empty() && types.size() != v.tokens.size())
    throw std::runtime_error(f.path() + ": tokenizer.ggml.token_type has " + std::to_string(types.size()) +
                             " entries for " + std::to_string(v.tokens.size()) + " tokens");
  // Control (3) and user-defined (4) tokens are matched in the text before pre-tokenization.
  for (size_t i = 0; i < types.size(); ++i) {
    const int t = static_cast<int>(types[i]);
    if ((t == 3 || t == 4) && !v.tokens[i].empty()) {
      AddedToken a;
      a.id = static_cast<int32_t>(i);
      a.content = v.tokens[i];
      a.special = t == 3;
      v.added.push_back(a);
    }
  }
  v.unk_id = static_cast<int32_t>(f.get_int("tokenizer.ggml.unknown_token_id", -1));
  v.bos_id = static_cast<int32_t>(f.get_int("tokenizer.ggml.bos_token_id", -1));
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                          "tokenizer.ggml.eom_token_id"}) {
    const auto id = static_cast<int32_t>(f.get_int(key, -1));
    if (id >= 0 && std::find(v.eos_ids.begin(), v.eos_ids.end(), id) == v.eos_ids.end()) v.eos_ids.push_back(id);
  }

  if (model == "gpt2") {
    v.byte_level = true;
    for (const std::string& merge : f.get_strings("tokenizer.ggml.merges")) {
      const size_t space = merge.find(' ');
      if (space == std::string::npos)
        throw std::runtime_error(f.path() + ": tokenizer.ggml.merges entry \"" + merge + "\" is not \"a b\"");
      v.merges.emplace_back(merge.substr(0, space), merge.substr(space + 1));
    }
    if (v.merges.empty()) throw std::runtime_error(f.path() + ": tokenizer.ggml.merges is missing or empty");
    // llama.cpp's names for the pre-tokenizers (tokenizer.ggml.pre) that we implement.
    const std::string pre = f.get_string("tokenizer.ggml.pre", "default");
    if (pre == "default" || pre == "gpt2") {
      v.pre_steps = {PreStep::gpt2};
    } else if (pre == "smollm" || pre == "starcoder" || pre == "refact" || pre == "codeshell") {
      v.pre_steps = {PreStep::digits_individual, PreStep::gpt2};
    } else if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") {
      v.pre_steps = {PreStep::llama3};
      v.ignore_merges = true;
    } else if (pre == "qwen2" || pre == "deepseek-r1-qwen") {
      v.pre_steps = {PreStep::qwen2};
    } else {
      throw std::runtime_error(f.path() + ": tokenizer.ggml.pre \"" + pre + "\" is not supported "
                               "(supported: default, gpt2, smollm, starcoder, refact, codeshell, "
                               "llama-bpe, llama3, llama-v3, qwen2, deepseek-r1-qwen)");
    }
    v.add_bos = f.get_bool("tokenizer.ggml.add_bos_token", false);
  } else if (model == "llama") {
    v.byte_level = false;
    v.byte_fallback = true;
    v.spaces_to_metaspace = true;
    v.space_prefix = f.get_bool("tokenizer.ggml.add_space_prefix", true) ? SpacePrefix::first : SpacePrefix::none;
    const std::vector<double> scores = f.get_numbers("tokenizer.ggml.scores");
    if (scores.size() != v.tokens.size())
      throw std::runtime_error(f.path() + ": tokenizer.ggml.scores has " + std::to_string(scores.size()) +
                               " entries for " + std::to_string(v.tokens.size()) + " tokens");
    v.scores.assign(scores.begin(), scores.end());
    v.add_bos = f.get_bool("tokenizer.ggml.add_bos_token", true);
  } else {
    throw std::runtime_error(f.path() + ": tokenizer.ggml.model \"" + model +
                             "\" is not supported (supported: gpt2, llama)");
  }
  return std::make_unique<BpeTokenizer>(std::move(v));
}

// The vocabulary of a model path:
//   - a .gguf file: its tokenizer metadata (an error when it has none);
//   - a directory with tokenizer.json: that file;
//   - a directory without tokenizer.json: the byte tokenizer, but only for a byte-level model,
//     one whose config.json says so: "vocab_size" at most ByteTokenizer::kVocab (256 bytes and
//     BOS, EOS, PAD: what `starattn init-model` presets and tools/train write), or the key
//     "starattn_byte_vocabulary": true (random checkpoints of a real model's shape, written by
//     write_random_model, whose ids past the bytes are tokens without text). Any other model
//     needs its tokenizer.json, and its absence is an error naming the file: a byte tokenizer
//     over a real vocabulary would encode and decode silently wrong text.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_path) {
  std::error_code ec;
  if (ends_with(model_path, ".gguf") && fs::is_regular_file(model_path, ec)) {
    const GgufFile file(model_path);
    return load_gguf_tokenizer(file);
  }
  if (!fs::is_directory(model_path, ec))
    throw std::runtime_error(model_path + ": not a model directory or .gguf file (cannot load a tokenizer)");
  const fs::path json_path = fs::path(model_path) / "tokenizer.json";
  if (fs::is_regular_file(json_path, ec)) return load_tokenizer_json(json_path.string());

  const fs::path config_path = fs::path(model_path) / "config.json";
  std::ifstream in(config_path);
  if (!in)
    throw std::runtime_error(json_path.string() + " is missing, and so is " + config_path.string() +
                             ": cannot tell the model's vocabulary");
  const json config = json::parse(in, nullptr, false);
  if (config.is_discarded() || !config.is_object())
    throw std::runtime_error(config_path.string() + ": not a JSON object (reading the vocabulary size)");
  const json marker = config.value("starattn_byte_vocabulary", json());
  if (!marker.is_null() && !marker.is_boolean())
    fail(config_path.string(), "starattn_byte_vocabulary", "must be true or false, got " + marker.dump());
  if (marker.is_boolean() && marker.get<bool>()) return std::make_unique<ByteTokenizer>();
  const json vocab = config.value("vocab_size", json());
  if (!vocab.is_number_integer())
    fail(config_path.string(), "vocab_size", "is missing or not an integer, so the vocabulary is unknown "
                                             "(and " + json_path.string() + " is missing)");
  if (vocab.get<int64_t>() <= ByteTokenizer::kVocab) return std::make_unique<ByteTokenizer>();
  throw std::runtime_error(
      json_path.string() + " is missing: the model's vocabulary (vocab_size " + vocab.dump() +
      " in config.json) is not the byte vocabulary of " + std::to_string(ByteTokenizer::kVocab) +
      " tokens, so it needs its tokenizer (copy tokenizer.json from the model's repository)");
}

}  // namespace starattn
