// The Jinja interpreter (runtime/jinja.h) against jinja2: every small feature template in
// tests/data/chat_templates/expected.json (rendered by tools/reference/render_chat_templates.py
// as transformers renders chat templates) must come out byte for byte, or fail with jinja2's
// message. Then what jinja2 cannot tell us: errors name the construct and its line and column.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "runtime/jinja.h"

namespace starattn::jinja {
namespace {

using ::testing::HasSubstr;

nlohmann::ordered_json load_expected() {
  const auto path = std::filesystem::path(STARATTN_SOURCE_DIR) / "tests" / "data" / "chat_templates" / "expected.json";
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  return nlohmann::ordered_json::parse(in);
}

Value from_json(const nlohmann::ordered_json& j) {
  if (j.is_null()) return Value::none();
  if (j.is_boolean()) return Value::boolean(j.get<bool>());
  if (j.is_number_integer()) return Value::integer(j.get<int64_t>());
  if (j.is_number()) return Value::number(j.get<double>());
  if (j.is_string()) return Value::string(j.get<std::string>());
  if (j.is_array()) {
    ValueList items;
    for (const auto& item : j) items.push_back(from_json(item));
    return Value::list(std::move(items));
  }
  ValueDict d;
  for (const auto& [k, v] : j.items()) d.set(k, from_json(v));
  return Value::dict(std::move(d));
}

// The globals transformers adds, with the reference script's fixed time (2024-09-05 14:30).
ValueDict with_transformers_globals(ValueDict vars) {
  vars.set("raise_exception", Value::function("raise_exception", [](const CallArgs& a) -> Value {
    throw RaisedError(to_str(a.positional.at(0)));
  }));
  vars.set("strftime_now", Value::function("strftime_now", [](const CallArgs& a) {
    std::tm t{};
    t.tm_year = 2024 - 1900;
    t.tm_mon = 8;
    t.tm_mday = 5;
    t.tm_hour = 14;
    t.tm_min = 30;
    char buf[128];
    const size_t n = std::strftime(buf, sizeof(buf), a.positional.at(0).as_string().c_str(), &t);
    return Value::string(std::string(buf, n));
  }));
  return vars;
}

std::string render(const std::string& source, ValueDict vars = {}) {
  return CompiledTemplate(source).render(with_transformers_globals(std::move(vars)));
}

TEST(Jinja, FeaturesMatchJinja2) {
  const nlohmann::ordered_json expected = load_expected();
  ASSERT_GE(expected["features"].size(), 40u);
  for (const auto& c : expected["features"]) {
    const std::string name = c["name"];
    ValueDict vars;
    for (const auto& [k, v] : c["variables"].items()) vars.set(k, from_json(v));
    if (c.contains("output")) {
      std::string got;
      try {
        got = render(c["template"], vars);
      } catch (const std::exception& e) {
        ADD_FAILURE() << name << ": threw " << e.what();
        continue;
      }
      EXPECT_EQ(got, c["output"].get<std::string>()) << name;
    } else {
      try {
        const std::string got = render(c["template"], vars);
        ADD_FAILURE() << name << ": rendered \"" << got << "\", jinja2 fails with " << c["error"];
      } catch (const Error& e) {
        EXPECT_THAT(e.what(), HasSubstr(c["error"].get<std::string>())) << name;
      }
    }
  }
}

TEST(Jinja, RaiseExceptionCarriesTheTemplatesMessage) {
  try {
    render("{% if true %}{{ raise_exception('No system role') }}{% endif %}");
    FAIL() << "did not throw";
  } catch (const RaisedError& e) {
    EXPECT_STREQ(e.what(), "No system role");
  }
}

// Errors name the problem and where it is: a tag's name, an expression's operator or start.
void expect_error(const std::string& source, const std::string& where, const std::string& what) {
  try {
    render(source);
    ADD_FAILURE() << source << ": did not throw";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(where)) << source;
    EXPECT_THAT(e.what(), HasSubstr(what)) << source;
  }
}

TEST(Jinja, UnsupportedConstructsAreErrorsWithTheirPosition) {
  expect_error("ok\n  {% include 'x.jinja' %}", "line 2, column 6", "the {% include %} tag is not supported");
  expect_error("{% raw %}x{% endraw %}", "line 1, column 4", "{% raw %}");
  expect_error("{{ x | nosuchfilter }}", "line 1, column 8", "no filter named 'nosuchfilter'");
  expect_error("{{ x is nosuchtest }}", "line 1, column 9", "no test named 'nosuchtest'");
  expect_error("{% for x in xs recursive %}{% endfor %}", "line 1", "recursive for loops are not supported");
  expect_error("{{ f(*args) }}", "line 1", "*args");
  expect_error("a\nb {{ 'x'.nosuchmethod() }}", "line 2, column 9", "str has no method 'nosuchmethod'");
  expect_error("{{ 'É' | lower }}", "line 1, column 10", "non-ASCII");
}

TEST(Jinja, SyntaxErrorsNameWhatWasExpected) {
  expect_error("{% if x %}never closed", "line 1", "missing {% endif %}");
  expect_error("{{ 'open string }}", "line 1, column 4", "string literal is never closed");
  expect_error("{{ (1 + 2 }}", "line 1", "unbalanced '}'");
  expect_error("{{ (1 + 2 ]}}", "line 1, column 11", "expected ')', found ']'");
  expect_error("{# never closed", "line 1, column 1", "comment {# is never closed");
  expect_error("{% endfor %}", "line 1", "the {% endfor %} tag is not supported");
}

TEST(Jinja, RuntimeErrorsHaveTheirPosition) {
  expect_error("\n\n  {{ 1 + 'a' }}", "line 3, column 8", "unsupported operand types for +: 'int' and 'str'");
  expect_error("{{ none.x.y }}", "line 1, column 10", "NoneType object has no attribute 'x'");
  expect_error("{% for x in 3 %}{% endfor %}", "line 1, column 13", "'int' object is not iterable");
  expect_error("{% set x = 1 %}{% set x.y = 2 %}", "line 1, column 19", "only namespace() objects take attributes");
  expect_error("{{ undefined_thing() }}", "line 1", "'undefined_thing' is undefined");
}

TEST(Jinja, GenerationBlocksRenderTheirBody) {
  // transformers' AssistantTracker extension: outside assistant-mask mode the body renders as is.
  EXPECT_EQ(render("{% generation %}kept {{ 1 }}{% endgeneration %}!"), "kept 1!");
}

TEST(Jinja, NewlinesAreNormalisedAndOneTrailingNewlineDropped) {
  EXPECT_EQ(render("a\r\nb\rc\n"), "a\nb\nc");
  EXPECT_EQ(render("a\n\n"), "a\n");
}

TEST(Jinja, ValuesPrintAsPythonDoes) {
  ValueDict vars;
  vars.set("f", Value::number(1.0 / 3));
  vars.set("big", Value::number(1.5e300));
  vars.set("tiny", Value::number(-2.5e-7));
  EXPECT_EQ(render("{{ f }} {{ big }} {{ tiny }} {{ 100.0 }} {{ 1e15 }}", vars),
            "0.3333333333333333 1.5e+300 -2.5e-07 100.0 1000000000000000.0");
}

}  // namespace
}  // namespace starattn::jinja
