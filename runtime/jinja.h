// A Jinja interpreter for the subset of the language that chat templates use, configured as
// Hugging Face transformers renders them: trim_blocks and lstrip_blocks on, the loop controls
// extension ({% break %}, {% continue %}), and Python's semantics for values (str(), repr(),
// json.dumps as transformers' tojson, truthiness, comparisons). Anything outside the subset is
// an error naming the construct and its line and column; nothing is skipped silently.
//
// Text is UTF-8; lengths, indices and slices count code points as Python does.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace starattn::jinja {

// A template that cannot be parsed or rendered. what() reads "line L, column C: problem".
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// raise_exception("...") in a template: what() is the template's message.
class RaisedError : public Error {
 public:
  using Error::Error;
};

class Value;
using ValueList = std::vector<Value>;

// Keys in insertion order, as Python dicts keep them.
struct ValueDict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value value);
};

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> named;
};
using Function = std::function<Value(const CallArgs&)>;

class Value {
 public:
  enum class Kind { undefined, none, boolean, integer, floating, string, list, dict, ns, function };

  Value() = default;  // undefined
  static Value undefined(std::string hint);  // hint: what was missing, for error messages
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value number(double d);
  static Value string(std::string s);
  static Value list(ValueList items);
  static Value dict(ValueDict items);
  static Value namespace_object(ValueDict attributes);  // namespace(): mutable, shared
  static Value function(std::string name, Function f);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::undefined; }
  bool is_none() const { return kind_ == Kind::none; }
  bool is_string() const { return kind_ == Kind::string; }
  bool is_list() const { return kind_ == Kind::list; }
  bool is_dict() const { return kind_ == Kind::dict; }
  bool is_number() const {
    return kind_ == Kind::boolean || kind_ == Kind::integer || kind_ == Kind::floating;
  }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return kind_ == Kind::boolean ? int64_t{b_} : i_; }
  double as_double() const;
  const std::string& as_string() const { return s_; }  // the string, or an undefined's hint
  const ValueList& as_list() const { return *list_; }
  const ValueDict& as_dict() const { return *dict_; }  // dicts and namespaces
  ValueDict& namespace_attributes() const { return *dict_; }
  const Function& as_function() const { return *function_; }
  const std::string& function_name() const { return s_; }

  bool truthy() const;
  std::string type_name() const;  // Python's name of the type, for messages

 private:
  Kind kind_ = Kind::undefined;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::string s_;
  std::shared_ptr<const ValueList> list_;
  std::shared_ptr<ValueDict> dict_;
  std::shared_ptr<const Function> function_;
};

// Python's str(), repr() and transformers' tojson (json.dumps with ensure_ascii=False).
std::string to_str(const Value& v);
std::string to_repr(const Value& v);
std::string to_json(const Value& v, int indent = -1, bool sort_keys = false);
bool values_equal(const Value& a, const Value& b);

struct Template;  // parsed form, internal

class CompiledTemplate {
 public:
  explicit CompiledTemplate(const std::string& source);  // throws Error
  ~CompiledTemplate();
  CompiledTemplate(const CompiledTemplate&) = delete;
  CompiledTemplate& operator=(const CompiledTemplate&) = delete;

  // Renders with these variables (and the built-in globals: range, namespace, dict).
  std::string render(const ValueDict& variables) const;

 private:
  std::string source_;
  std::unique_ptr<Template> parsed_;
};

}  // namespace starattn::jinja
