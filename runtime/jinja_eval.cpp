// Renders a parsed template: Jinja's scoping (a for loop's body is its own scope, if is not; a
// macro sees the template's top level), the loop object, namespaces, macros, and the globals
// range(), namespace() and dict(). Errors get the line and column of the construct.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/jinja_ast.h"

namespace starattn::jinja {
namespace {

struct Frame {
  std::map<std::string, Value> vars;
  Frame* parent = nullptr;
};

enum class Flow { normal, break_, continue_ };

Value global_range(const CallArgs& a) {
  if (!a.named.empty() || a.positional.empty() || a.positional.size() > 3)
    throw std::runtime_error("range() takes 1 to 3 positional arguments");
  for (const Value& v : a.positional)
    if (v.kind() != Value::Kind::integer && v.kind() != Value::Kind::boolean)
      throw std::runtime_error("range() needs integers, not " + v.type_name());
  int64_t start = 0, stop, step = 1;
  if (a.positional.size() == 1) {
    stop = a.positional[0].as_int();
  } else {
    start = a.positional[0].as_int();
    stop = a.positional[1].as_int();
    if (a.positional.size() == 3) step = a.positional[2].as_int();
  }
  if (step == 0) throw std::runtime_error("range() step must not be zero");
  ValueList out;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (out.size() >= 100000) throw std::runtime_error("range() of more than 100000 items");
    out.push_back(Value::integer(i));
  }
  return Value::list(std::move(out));
}

// namespace(...) and dict(...): a mapping from one positional mapping and keyword arguments.
ValueDict mapping_from_args(const char* what, const CallArgs& a) {
  ValueDict d;
  if (a.positional.size() > 1) throw std::runtime_error(std::string(what) + "() takes at most one positional argument");
  if (!a.positional.empty()) {
    const Value& init = a.positional[0];
    if (!init.is_dict()) throw std::runtime_error(std::string(what) + "() needs a mapping, not " + init.type_name());
    d = init.as_dict();
  }
  for (const auto& [k, v] : a.named) d.set(k, v);
  return d;
}

class Renderer {
 public:
  Renderer(const std::string& source, const ValueDict& variables) : src_(source) {
    for (const auto& [k, v] : variables.items) root_.vars[k] = v;
    auto def = [&](const char* name, Function f) {
      if (!root_.vars.count(name)) root_.vars[name] = Value::function(name, std::move(f));
    };
    def("range", global_range);
    def("namespace", [](const CallArgs& a) { return Value::namespace_object(mapping_from_args("namespace", a)); });
    def("dict", [](const CallArgs& a) { return Value::dict(mapping_from_args("dict", a)); });
  }

  std::string run(const Body& body) {
    std::string out;
    if (exec_body(body, root_, out) != Flow::normal) fail(src_, 0, "break or continue outside a loop");
    return out;
  }

 private:
  [[noreturn]] void error_at(size_t pos, const std::string& problem) const { fail(src_, pos, problem); }

  Value lookup(const std::string& name, Frame& frame) const {
    for (Frame* f = &frame; f; f = f->parent) {
      auto it = f->vars.find(name);
      if (it != f->vars.end()) return it->second;
    }
    return Value::undefined("'" + name + "' is undefined");
  }

  Flow exec_body(const Body& body, Frame& frame, std::string& out) {
    for (const StmtPtr& s : body) {
      const Flow f = exec(*s, frame, out);
      if (f != Flow::normal) return f;
    }
    return Flow::normal;
  }

  Flow exec(const Stmt& s, Frame& frame, std::string& out) {
    switch (s.kind) {
      case Stmt::Kind::text: out += s.text; return Flow::normal;
      case Stmt::Kind::output: out += to_str(eval(*s.expr, frame)); return Flow::normal;
      case Stmt::Kind::if_:
        for (const auto& [cond, body] : s.branches)
          if (!cond || eval(*cond, frame).truthy()) return exec_body(body, frame, out);
        return Flow::normal;
      case Stmt::Kind::for_: exec_for(s, frame, out); return Flow::normal;
      case Stmt::Kind::set: exec_set(s, frame); return Flow::normal;
      case Stmt::Kind::set_block: {
        std::string text;
        exec_scoped(s.body, frame, text);
        frame.vars[s.text] = Value::string(text);
        return Flow::normal;
      }
      case Stmt::Kind::macro: define_macro(s, frame); return Flow::normal;
      case Stmt::Kind::filter_block: {
        std::string text;
        exec_scoped(s.body, frame, text);
        out += to_str(eval_filter(*s.expr, Value::string(text), frame));
        return Flow::normal;
      }
      case Stmt::Kind::generation: return exec_body(s.body, frame, out);
      case Stmt::Kind::break_: return Flow::break_;
      case Stmt::Kind::continue_: return Flow::continue_;
    }
    return Flow::normal;
  }

  void exec_scoped(const Body& body, Frame& frame, std::string& out) {
    Frame inner{{}, &frame};
    if (exec_body(body, inner, out) != Flow::normal) error_at(body.empty() ? 0 : body.front()->pos, "break or continue outside a loop");
  }

  void assign(const Stmt& s, const std::vector<std::string>& names, const Value& v, Frame& frame) {
    if (names.size() == 1) {
      frame.vars[names[0]] = v;
      return;
    }
    std::vector<Value> items;
    try {
      items = iterate(v);
    } catch (const std::exception& e) {
      error_at(s.pos, std::string("cannot unpack: ") + e.what());
    }
    if (items.size() != names.size())
      error_at(s.pos, "cannot unpack " + std::to_string(items.size()) + " values into " +
                          std::to_string(names.size()) + " names");
    for (size_t i = 0; i < names.size(); ++i) frame.vars[names[i]] = items[i];
  }

  void exec_set(const Stmt& s, Frame& frame) {
    const Value v = eval(*s.expr, frame);
    if (!s.attribute) {
      assign(s, s.targets, v, frame);
      return;
    }
    const Value target = lookup(s.targets[0], frame);
    if (target.kind() != Value::Kind::ns)
      error_at(s.pos, "cannot assign the attribute '" + s.targets[1] + "' of " + target.type_name() +
                          " '" + s.targets[0] + "': only namespace() objects take attributes");
    target.namespace_attributes().set(s.targets[1], v);
  }

  void exec_for(const Stmt& s, Frame& frame, std::string& out) {
    const Value seq = eval(*s.expr, frame);
    std::vector<Value> items;
    try {
      items = iterate(seq);
    } catch (const std::exception& e) {
      error_at(s.expr->pos, std::string("cannot loop over this: ") + e.what());
    }
    if (s.condition) {  // "for x in xs if cond": the loop sees only the items that pass
      std::vector<Value> kept;
      for (const Value& item : items) {
        Frame probe{{}, &frame};
        assign(s, s.targets, item, probe);
        if (eval(*s.condition, probe).truthy()) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      exec_scoped(s.else_body, frame, out);
      return;
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      Frame inner{{}, &frame};
      assign(s, s.targets, items[i], inner);
      ValueDict loop;
      loop.set("index", Value::integer(i + 1));
      loop.set("index0", Value::integer(i));
      loop.set("revindex", Value::integer(n - i));
      loop.set("revindex0", Value::integer(n - i - 1));
      loop.set("first", Value::boolean(i == 0));
      loop.set("last", Value::boolean(i == n - 1));
      loop.set("length", Value::integer(n));
      loop.set("depth", Value::integer(1));
      loop.set("depth0", Value::integer(0));
      loop.set("previtem", i > 0 ? items[i - 1] : Value::undefined("there is no previous item"));
      loop.set("nextitem", i + 1 < n ? items[i + 1] : Value::undefined("there is no next item"));
      loop.set("cycle", Value::function("loop.cycle", [i](const CallArgs& a) {
        if (a.positional.empty()) throw std::runtime_error("loop.cycle() needs at least one value");
        return a.positional[static_cast<size_t>(i) % a.positional.size()];
      }));
      inner.vars["loop"] = Value::dict(std::move(loop));
      if (exec_body(s.body, inner, out) == Flow::break_) break;
    }
  }

  void define_macro(const Stmt& s, Frame& frame) {
    const Stmt* m = &s;
    frame.vars[s.text] = Value::function(s.text, [this, m](const CallArgs& a) {
      if (a.positional.size() > m->params.size())
        throw std::runtime_error("macro '" + m->text + "' takes " + std::to_string(m->params.size()) +
                                 " arguments, given " + std::to_string(a.positional.size()));
      Frame inner{{}, &root_};
      for (size_t i = 0; i < m->params.size(); ++i) {
        Value v = i < a.positional.size() ? a.positional[i] : Value::undefined("'" + m->params[i] + "' is undefined");
        if (i >= a.positional.size() && m->defaults[i]) v = eval(*m->defaults[i], inner);
        inner.vars[m->params[i]] = v;
      }
      for (const auto& [k, v] : a.named) {
        bool known = false;
        for (const std::string& p : m->params) known = known || p == k;
        if (!known) throw std::runtime_error("macro '" + m->text + "' has no argument '" + k + "'");
        inner.vars[k] = v;
      }
      std::string text;
      if (exec_body(m->body, inner, text) != Flow::normal) error_at(m->pos, "break or continue outside a loop");
      return Value::string(text);
    });
  }

  CallArgs eval_args(const Expr& e, size_t first, Frame& frame) {
    CallArgs a;
    for (size_t i = first; i < e.args.size(); ++i) a.positional.push_back(eval(*e.args[i], frame));
    for (const auto& [k, v] : e.kwargs) a.named.emplace_back(k, eval(*v, frame));
    return a;
  }

  Value eval_filter(const Expr& e, const Value& input, Frame& frame) {
    // A filter chain's inner filters hang off args[0]; the innermost has a null input.
    const Value in = e.args[0] ? eval_filter_input(*e.args[0], input, frame) : input;
    const CallArgs a = eval_args(e, 1, frame);
    try {
      return apply_filter(e.name, in, a);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& ex) {
      error_at(e.pos, "filter '" + e.name + "': " + ex.what());
    }
  }

  Value eval_filter_input(const Expr& e, const Value& input, Frame& frame) {
    if (e.kind == Expr::Kind::filter) return eval_filter(e, input, frame);
    return eval(e, frame);
  }

  // Turns a failure of an operation into an error at `pos`; undefined values name themselves.
  template <typename F>
  Value guarded(size_t pos, F&& f) {
    try {
      return f();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& ex) {
      error_at(pos, ex.what());
    }
  }

  Value eval(const Expr& e, Frame& frame) {
    switch (e.kind) {
      case Expr::Kind::literal: return e.value;
      case Expr::Kind::name: return lookup(e.name, frame);
      case Expr::Kind::getattr: {
        const Value obj = eval(*e.args[0], frame);
        return guarded(e.pos, [&] { return get_attr(obj, e.name); });
      }
      case Expr::Kind::getitem: {
        const Value obj = eval(*e.args[0], frame);
        const Value key = eval(*e.args[1], frame);
        return guarded(e.pos, [&] { return get_item(obj, key); });
      }
      case Expr::Kind::slice: {
        const Value obj = eval(*e.args[0], frame);
        Value parts[3];
        for (int i = 0; i < 3; ++i) parts[i] = e.args[i + 1] ? eval(*e.args[i + 1], frame) : Value::none();
        return guarded(e.pos, [&] { return slice_of(obj, parts[0], parts[1], parts[2]); });
      }
      case Expr::Kind::call: return eval_call(e, frame);
      case Expr::Kind::filter: return eval_filter(e, Value(), frame);
      case Expr::Kind::test: {
        const Value in = eval(*e.args[0], frame);
        const CallArgs a = eval_args(e, 1, frame);
        return guarded(e.pos, [&] { return Value::boolean(apply_test(e.name, in, a)); });
      }
      case Expr::Kind::unary: {
        const Value v = eval(*e.args[0], frame);
        if (e.name == "not") return Value::boolean(!v.truthy());
        return guarded(e.pos, [&] {
          return binary_op(e.name == "-" ? "-" : "+", Value::integer(0), v);
        });
      }
      case Expr::Kind::binary: {
        if (e.name == "and" || e.name == "or") {  // Python: the deciding operand itself
          const Value left = eval(*e.args[0], frame);
          if (left.truthy() == (e.name == "or")) return left;
          return eval(*e.args[1], frame);
        }
        const Value left = eval(*e.args[0], frame);
        const Value right = eval(*e.args[1], frame);
        return guarded(e.pos, [&] { return binary_op(e.name, left, right); });
      }
      case Expr::Kind::compare: {
        Value left = eval(*e.args[0], frame);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          const Value right = eval(*e.args[i + 1], frame);
          const bool ok = guarded(e.pos, [&] { return Value::boolean(compare_op(e.ops[i], left, right)); }).as_bool();
          if (!ok) return Value::boolean(false);
          left = right;
        }
        return Value::boolean(true);
      }
      case Expr::Kind::cond:
        if (eval(*e.args[0], frame).truthy()) return eval(*e.args[1], frame);
        return e.args[2] ? eval(*e.args[2], frame) : Value::undefined("the condition was false and there is no else");
      case Expr::Kind::list: {
        ValueList items;
        for (const ExprPtr& a : e.args) items.push_back(eval(*a, frame));
        return Value::list(std::move(items));
      }
      case Expr::Kind::dict: {
        ValueDict d;
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          const Value k = eval(*e.args[i], frame);
          if (!k.is_string()) error_at(e.args[i]->pos, "dict keys must be strings here, not " + k.type_name());
          d.set(k.as_string(), eval(*e.args[i + 1], frame));
        }
        return Value::dict(std::move(d));
      }
    }
    error_at(e.pos, "unknown expression");
  }

  Value eval_call(const Expr& e, Frame& frame) {
    const Expr& callee = *e.args[0];
    const CallArgs a = eval_args(e, 1, frame);
    if (callee.kind == Expr::Kind::getattr) {  // obj.method(...)
      const Value obj = eval(*callee.args[0], frame);
      if (obj.is_string() || obj.is_list() || obj.is_dict()) {
        bool found = false;
        const Value r = guarded(e.pos, [&] { return call_method(obj, callee.name, a, found); });
        if (found) return r;
        const Value attr = obj.is_dict() ? get_attr(obj, callee.name) : Value();
        if (attr.kind() != Value::Kind::function)
          error_at(callee.pos, obj.type_name() + " has no method '" + callee.name + "' here");
        return call_function(attr, a, e.pos);
      }
      if (obj.is_undefined()) error_at(callee.pos, obj.as_string());
      return call_function(guarded(callee.pos, [&] { return get_attr(obj, callee.name); }), a, e.pos);
    }
    return call_function(eval(callee, frame), a, e.pos);
  }

  Value call_function(const Value& f, const CallArgs& a, size_t pos) {
    if (f.is_undefined()) error_at(pos, f.as_string() + ", so it cannot be called");
    if (f.kind() != Value::Kind::function) error_at(pos, "a " + f.type_name() + " cannot be called");
    try {
      return f.as_function()(a);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& ex) {
      error_at(pos, f.function_name() + "(): " + ex.what());
    }
  }

  const std::string& src_;
  Frame root_;
};

}  // namespace

CompiledTemplate::CompiledTemplate(const std::string& source) : source_(normalise_source(source)) {
  parsed_ = parse(source_, tokenize(source_));
}

CompiledTemplate::~CompiledTemplate() = default;

std::string CompiledTemplate::render(const ValueDict& variables) const {
  return Renderer(source_, variables).run(parsed_->body);
}

}  // namespace starattn::jinja
