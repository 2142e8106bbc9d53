// ModelConfig from and to Hugging Face config.json (llama, mistral, qwen2).
#include "runtime/model_config.h"

#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace starattn {
namespace {

using json = nlohmann::json;

// The Hugging Face model types we implement, with the class name transformers uses for them
// (written to "architectures" so that AutoModelForCausalLM can load what we write).
struct Architecture {
  const char* model_type;
  const char* hf_class;
  int default_max_positions;  // transformers' default when the key is absent
};
constexpr Architecture kArchitectures[] = {
    {"llama", "LlamaForCausalLM", 2048},
    {"mistral", "MistralForCausalLM", 4096 * 32},
    {"qwen2", "Qwen2ForCausalLM", 32768},
};

const Architecture* find_architecture(const std::string& model_type) {
  for (const auto& a : kArchitectures)
    if (model_type == a.model_type) return &a;
  return nullptr;
}

std::string supported_architectures() {
  std::string out;
  for (const auto& a : kArchitectures) {
    if (!out.empty()) out += ", ";
    out += a.model_type;
  }
  return out;
}

// "string \"32\"": the JSON type plus a short excerpt of the value, for error messages.
std::string describe_value(const json& v) {
  std::string text = v.dump();
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return std::string(v.type_name()) + " " + text;
}

// The double nlohmann should write for a float so the file shows the short decimal a person
// would write (1e-05, not 9.99999974738e-06) while still reading back as the same float.
double json_float(float f) {
  if (!std::isfinite(f)) return static_cast<double>(f);
  char buf[32];
  for (int precision = 1; precision <= 9; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, static_cast<double>(f));
    const double d = std::strtod(buf, nullptr);
    if (static_cast<float>(d) == f) return d;
  }
  return static_cast<double>(f);
}

// Typed access to the fields of one JSON object; every error names the file and the field.
class FieldReader {
 public:
  FieldReader(const json& object, std::string source, std::string prefix = "")
      : object_(object), source_(std::move(source)), prefix_(std::move(prefix)) {}

  [[noreturn]] void fail(const std::string& field, const std::string& problem) const {
    throw std::runtime_error(source_ + ": field \"" + prefix_ + field + "\" " + problem);
  }

  // The value, or nullptr when the key is absent or null (Hugging Face writes null for unset).
  const json* find(const std::string& field) const {
    auto it = object_.find(field);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  int to_int(const std::string& field, const json& v) const {
    if (!v.is_number_integer()) fail(field, "must be an integer, got " + describe_value(v));
    if (v.is_number_unsigned()) {
      const auto u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT_MAX)) fail(field, "is out of range: " + v.dump());
      return static_cast<int>(u);
    }
    const auto i = v.get<int64_t>();
    if (i < INT_MIN || i > INT_MAX) fail(field, "is out of range: " + v.dump());
    return static_cast<int>(i);
  }

  int require_int(const std::string& field) const {
    const json* v = find(field);
    if (!v) fail(field, "is missing");
    return to_int(field, *v);
  }
  int get_int(const std::string& field, int fallback) const {
    const json* v = find(field);
    return v ? to_int(field, *v) : fallback;
  }

  float to_float(const std::string& field, const json& v) const {
    if (!v.is_number()) fail(field, "must be a number, got " + describe_value(v));
    return static_cast<float>(v.get<double>());
  }
  float require_float(const std::string& field) const {
    const json* v = find(field);
    if (!v) fail(field, "is missing");
    return to_float(field, *v);
  }
  float get_float(const std::string& field, float fallback) const {
    const json* v = find(field);
    return v ? to_float(field, *v) : fallback;
  }

  bool get_bool(const std::string& field, bool fallback) const {
    const json* v = find(field);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(field, "must be true or false, got " + describe_value(*v));
    return v->get<bool>();
  }

  std::string get_string(const std::string& field) const {
    const json* v = find(field);
    if (!v) fail(field, "is missing");
    if (!v->is_string()) fail(field, "must be a string, got " + describe_value(*v));
    return v->get<std::string>();
  }

 private:
  const json& object_;
  std::string source_;
  std::string prefix_;
};

// model_type, or when absent the first recognised entry of architectures[].
std::string resolve_architecture(const FieldReader& r, const std::string& source) {
  if (r.find("model_type")) {
    const std::string type = r.get_string("model_type");
    if (!find_architecture(type))
      throw std::runtime_error(source + ": model_type \"" + type +
                               "\" is not supported (supported: " + supported_architectures() +
                               ")");
    return type;
  }
  const json* classes = r.find("architectures");
  if (!classes)
    throw std::runtime_error(source + ": neither \"model_type\" nor \"architectures\" is set " +
                             "(supported model types: " + supported_architectures() + ")");
  if (!classes->is_array())
    r.fail("architectures", "must be an array of strings, got " + describe_value(*classes));
  std::string seen;
  for (const auto& c : *classes) {
    if (!c.is_string())
      r.fail("architectures", "must be an array of strings, got " + describe_value(*classes));
    for (const auto& a : kArchitectures)
      if (c.get<std::string>() == a.hf_class) return a.model_type;
    seen += (seen.empty() ? "" : ", ") + c.get<std::string>();
  }
  throw std::runtime_error(source + ": architectures [" + seen +
                           "] are not supported (supported model types: " +
                           supported_architectures() + ")");
}

// `key` is "rope_scaling" (transformers 4) or "rope_parameters" (transformers 5, which also
// moves rope_theta inside it and writes rope_type "default" for unscaled RoPE).
RopeScaling parse_rope_scaling(const FieldReader& r, const std::string& source,
                               const std::string& key) {
  RopeScaling out;
  const json* v = r.find(key);
  if (!v) return out;
  if (!v->is_object()) r.fail(key, "must be an object or null, got " + describe_value(*v));
  FieldReader s(*v, source, key + ".");
  // transformers renamed "type" to "rope_type"; checkpoints carry either.
  std::string type;
  if (s.find("rope_type"))
    type = s.get_string("rope_type");
  else if (s.find("type"))
    type = s.get_string("type");
  else
    r.fail(key, "has neither \"rope_type\" nor \"type\"");
  if (type == "default") return out;
  if (type != "llama3")
    r.fail(key, "has type \"" + type + "\", which is not supported (supported: llama3, " +
                               "default)");
  out.type = type;
  out.factor = s.require_float("factor");
  out.low_freq_factor = s.require_float("low_freq_factor");
  out.high_freq_factor = s.require_float("high_freq_factor");
  out.original_max_position_embeddings = s.require_int("original_max_position_embeddings");
  return out;
}

std::vector<int> parse_eos(const FieldReader& r) {
  std::vector<int> out;
  const json* v = r.find("eos_token_id");
  if (!v) return out;
  if (v->is_array()) {
    for (size_t i = 0; i < v->size(); ++i)
      out.push_back(r.to_int("eos_token_id[" + std::to_string(i) + "]", (*v)[i]));
  } else {
    out.push_back(r.to_int("eos_token_id", *v));
  }
  return out;
}

// The checkpoint's element type: "torch_dtype" (transformers 4) or "dtype" (transformers 5).
// Only the names torch gives the float types we read are accepted; anything else ("float99",
// "int8") means a file we would misread, refused here rather than as odd tensors later.
void check_dtype(const FieldReader& r) {
  static const char* const kAccepted[] = {"float32", "float16", "bfloat16"};
  for (const char* field : {"torch_dtype", "dtype"}) {
    if (!r.find(field)) continue;
    const std::string value = r.get_string(field);
    bool known = false;
    for (const char* a : kAccepted) known = known || value == a;
    if (!known)
      r.fail(field, "is \"" + value + "\", which is not a supported checkpoint dtype (supported: "
                    "float32, float16, bfloat16)");
  }
}

}  // namespace

float ModelConfig::attention_scale() const {
  return 1.0f / std::sqrt(static_cast<float>(head_dim));
}

int64_t ModelConfig::kv_bytes_per_token(size_t element_size) const {
  return 2 * static_cast<int64_t>(num_layers) * kv_dim() * static_cast<int64_t>(element_size);
}

ModelConfig ModelConfig::from_json(const std::string& text, const std::string& source) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::parse_error& e) {
    throw std::runtime_error(source + ": not valid JSON: " + e.what());
  }
  if (!root.is_object())
    throw std::runtime_error(source + ": expected a JSON object at the top level, got " +
                             root.type_name());
  const FieldReader r(root, source);

  ModelConfig c;
  c.architecture = resolve_architecture(r, source);
  // Quantized checkpoints would otherwise fail later with confusing missing-tensor errors.
  if (r.find("quantization_config"))
    throw std::runtime_error(source + ": quantized checkpoints (quantization_config) are not " +
                             "supported; use a float16/bfloat16/float32 checkpoint");
  check_dtype(r);
  if (r.find("hidden_act") && r.get_string("hidden_act") != "silu")
    r.fail("hidden_act", "is \"" + r.get_string("hidden_act") + "\"; only \"silu\" is supported");

  c.vocab_size = r.require_int("vocab_size");
  c.hidden_size = r.require_int("hidden_size");
  c.intermediate_size = r.require_int("intermediate_size");
  c.num_layers = r.require_int("num_hidden_layers");
  c.num_heads = r.require_int("num_attention_heads");
  c.num_kv_heads = r.get_int("num_key_value_heads", c.num_heads);
  if (r.find("head_dim")) {
    c.head_dim = r.get_int("head_dim", 0);
  } else if (c.num_heads > 0) {
    if (c.hidden_size % c.num_heads != 0)
      r.fail("hidden_size", "(" + std::to_string(c.hidden_size) +
                                ") is not divisible by num_attention_heads (" +
                                std::to_string(c.num_heads) + ") and head_dim is not given");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  c.rms_norm_eps = r.get_float("rms_norm_eps", 1e-6f);  // transformers' default for all three
  c.rope_theta = r.get_float("rope_theta", 10000.0f);
  c.rope_scaling = parse_rope_scaling(r, source, "rope_scaling");
  if (const json* params = r.find("rope_parameters"); params && params->is_object()) {
    const FieldReader p(*params, source, "rope_parameters.");
    if (p.find("rope_theta")) c.rope_theta = p.get_float("rope_theta", c.rope_theta);
    c.rope_scaling = parse_rope_scaling(r, source, "rope_parameters");
  }
  c.max_position_embeddings = r.get_int("max_position_embeddings",
                                        find_architecture(c.architecture)->default_max_positions);
  c.tie_word_embeddings = r.get_bool("tie_word_embeddings", false);

  if (c.architecture == "qwen2") {
    // Qwen2 hard-codes bias on q/k/v (not o) regardless of any config key.
    c.attention_bias = true;
    c.o_proj_bias = false;
    if (r.get_bool("use_sliding_window", false)) c.sliding_window = r.get_int("sliding_window", 0);
  } else {
    // Llama's attention_bias puts a bias on all four projections.
    c.attention_bias = r.get_bool("attention_bias", false);
    c.o_proj_bias = c.attention_bias;
    if (c.architecture == "mistral") c.sliding_window = r.get_int("sliding_window", 0);
  }
  if (c.architecture == "llama") c.mlp_bias = r.get_bool("mlp_bias", false);

  c.bos_token_id = r.get_int("bos_token_id", -1);
  c.eos_token_ids = parse_eos(r);
  c.validate(source);
  return c;
}

ModelConfig ModelConfig::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open model config " + path);
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw std::runtime_error("cannot read model config " + path);
  return from_json(text.str(), path);
}

std::string ModelConfig::to_json() const {
  const Architecture* arch = find_architecture(architecture);
  if (!arch)
    throw std::runtime_error("ModelConfig::to_json: architecture \"" + architecture +
                             "\" is not supported (supported: " + supported_architectures() + ")");
  // config.json derives the bias flags from the architecture, so only combinations it can
  // express are written (otherwise the file would read back as a different model).
  const bool qwen2 = architecture == "qwen2";
  if (qwen2 ? (!attention_bias || o_proj_bias) : (o_proj_bias != attention_bias))
    throw std::runtime_error("ModelConfig::to_json: " + architecture + " with attention_bias=" +
                             (attention_bias ? "true" : "false") + " and o_proj_bias=" +
                             (o_proj_bias ? "true" : "false") + " has no config.json form");
  if (mlp_bias && architecture != "llama")
    throw std::runtime_error("ModelConfig::to_json: mlp_bias is only expressible for llama");
  if (sliding_window > 0 && architecture == "llama")
    throw std::runtime_error("ModelConfig::to_json: sliding_window is not expressible for llama");

  nlohmann::ordered_json j;
  j["architectures"] = {arch->hf_class};
  j["model_type"] = architecture;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_layers;
  j["num_attention_heads"] = num_heads;
  j["num_key_value_heads"] = num_kv_heads;
  j["head_dim"] = head_dim;
  j["hidden_act"] = "silu";
  j["rms_norm_eps"] = json_float(rms_norm_eps);
  j["rope_theta"] = json_float(rope_theta);
  if (rope_scaling.type.empty()) {
    j["rope_scaling"] = nullptr;
  } else {
    j["rope_scaling"] = {
        {"rope_type", rope_scaling.type},
        {"factor", json_float(rope_scaling.factor)},
        {"low_freq_factor", json_float(rope_scaling.low_freq_factor)},
        {"high_freq_factor", json_float(rope_scaling.high_freq_factor)},
        {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings}};
  }
  j["max_position_embeddings"] = max_position_embeddings;
  j["tie_word_embeddings"] = tie_word_embeddings;
  if (!qwen2) j["attention_bias"] = attention_bias;
  if (architecture == "llama") j["mlp_bias"] = mlp_bias;
  if (qwen2) j["use_sliding_window"] = sliding_window > 0;
  if (architecture != "llama") {
    if (sliding_window > 0)
      j["sliding_window"] = sliding_window;
    else
      j["sliding_window"] = nullptr;
  }
  if (bos_token_id >= 0)
    j["bos_token_id"] = bos_token_id;
  else
    j["bos_token_id"] = nullptr;
  if (eos_token_ids.empty())
    j["eos_token_id"] = nullptr;
  else if (eos_token_ids.size() == 1)
    j["eos_token_id"] = eos_token_ids[0];
  else
    j["eos_token_id"] = eos_token_ids;
  j["torch_dtype"] = "float32";
  return j.dump(2) + "\n";
}

void ModelConfig::validate(const std::string& source) const {
  auto fail = [&](const std::string& problem) {
    throw std::runtime_error(source + ": invalid model config: " + problem);
  };
  if (!find_architecture(architecture))
    fail("architecture \"" + architecture + "\" is not supported (supported: " +
         supported_architectures() + ")");
  const std::pair<const char*, int> sizes[] = {
      {"vocab_size", vocab_size},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_layers},
      {"num_attention_heads", num_heads},
      {"num_key_value_heads", num_kv_heads},
      {"head_dim", head_dim},
      {"max_position_embeddings", max_position_embeddings},
  };
  for (const auto& [name, value] : sizes)
    if (value <= 0) fail(std::string(name) + " must be positive, got " + std::to_string(value));
  if (head_dim % 2 != 0)
    fail("head_dim must be even for rotary embeddings, got " + std::to_string(head_dim));
  if (num_heads % num_kv_heads != 0)
    fail("num_attention_heads (" + std::to_string(num_heads) +
         ") is not a multiple of num_key_value_heads (" + std::to_string(num_kv_heads) + ")");
  if (static_cast<int64_t>(num_heads) * head_dim > INT_MAX)
    fail("num_attention_heads * head_dim overflows");
  if (!(rms_norm_eps > 0.0f) || !std::isfinite(rms_norm_eps))
    fail("rms_norm_eps must be a positive number, got " + std::to_string(rms_norm_eps));
  if (!(rope_theta > 0.0f) || !std::isfinite(rope_theta))
    fail("rope_theta must be a positive number, got " + std::to_string(rope_theta));
  if (!rope_scaling.type.empty()) {
    if (rope_scaling.type != "llama3")
      fail("rope_scaling type \"" + rope_scaling.type + "\" is not supported (supported: llama3)");
    if (!(rope_scaling.factor > 0.0f) || !(rope_scaling.low_freq_factor > 0.0f))
      fail("rope_scaling factor and low_freq_factor must be positive");
    // llama3 interpolates between the two wavelengths; equal factors would divide by zero.
    if (!(rope_scaling.high_freq_factor > rope_scaling.low_freq_factor))
      fail("rope_scaling high_freq_factor must exceed low_freq_factor");
    if (rope_scaling.original_max_position_embeddings <= 0)
      fail("rope_scaling original_max_position_embeddings must be positive");
  }
  if (bos_token_id < -1 || bos_token_id >= vocab_size)
    fail("bos_token_id " + std::to_string(bos_token_id) + " is outside the vocabulary (size " +
         std::to_string(vocab_size) + ")");
  for (int id : eos_token_ids)
    if (id < 0 || id >= vocab_size)
      fail("eos_token_id " + std::to_string(id) + " is outside the vocabulary (size " +
           std::to_string(vocab_size) + ")");
  if (sliding_window < 0) fail("sliding_window must not be negative");
}

}  // namespace starattn
