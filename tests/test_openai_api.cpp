// The OpenAI API mapping (server/http_api.h): request fields to one RequestSpec per choice
// (prompt forms, plain-prompt split, n, penalties, logit_bias, logprobs, ignored and refused
// fields), the model names, the response and chunk shapes with logprobs, and the HTTP server
// answering n > 1, logprobs and /v1/models/{id} over loopback from a scripted service.
#include <gtest/gtest.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <cmath>
#include <mutex>
#include <random>
#include <thread>

#include "server/http_api.h"
#include "server/http_server.h"

namespace starattn::server {
namespace {

using json = nlohmann::json;

ApiError error_of(Endpoint e, const std::string& body) {
  try {
    parse_api_request(e, body);
  } catch (const ApiError& err) {
    return err;
  }
  return ApiError(200, "", "<accepted>", "", "accepted");
}

std::string param_of(Endpoint e, const std::string& body) { return error_of(e, body).param; }

const Endpoint kCompletions = Endpoint::completions;
const Endpoint kChat = Endpoint::chat_completions;

// ---- requests ----

TEST(OpenAIRequest, ParsesACompletionRequest) {
  const ApiRequest a = parse_api_request(
      kCompletions,
      R"({"model":"m","prompt":"ctx","query":"q?","max_tokens":5,"temperature":0.5,"top_p":0.9,
          "top_k":3,"seed":11,"stop":["a","b"],"block_size":8,"anchor_size":4,"mode":"full",
          "stream":true,"stream_options":{"include_usage":true}})");
  ASSERT_EQ(a.choices.size(), 1u);
  const RequestSpec& r = a.choices[0];
  EXPECT_EQ(a.model, "m");
  EXPECT_EQ(r.prompt.context_text, "ctx");
  EXPECT_EQ(r.prompt.query_text, "q?");
  EXPECT_EQ(r.max_tokens, 5);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_EQ(r.sampling.top_k, 3);
  EXPECT_EQ(r.sampling.seed, 11u);
  EXPECT_EQ(r.stop_strings, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(r.block_size, 8);
  EXPECT_EQ(r.anchor_size, 4);
  EXPECT_EQ(r.mode, AttentionMode::full);
  EXPECT_TRUE(a.stream);
  EXPECT_TRUE(a.include_usage);
  EXPECT_FALSE(r.prompt.chat);
  EXPECT_TRUE(r.prompt.context_is_text && r.prompt.query_is_text);
  EXPECT_EQ(a.logprobs, -1);
  EXPECT_EQ(r.logits.top_logprobs, -1);
}

TEST(OpenAIRequest, ParsesAChatRequest) {
  const ApiRequest a = parse_api_request(
      kChat,
      R"({"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"doc"}]},
          {"role":"assistant","content":"ok","tool_calls":null},{"role":"user","content":"q","name":"me"}],
          "stop":"x","max_completion_tokens":3})");
  ASSERT_EQ(a.choices.size(), 1u);
  const RequestSpec& r = a.choices[0];
  ASSERT_EQ(r.prompt.messages.size(), 4u);
  EXPECT_TRUE(r.prompt.chat);
  EXPECT_EQ(r.prompt.messages[1].content, "doc");
  EXPECT_EQ(r.stop_strings, std::vector<std::string>{"x"});
  EXPECT_EQ(r.max_tokens, 3);
  EXPECT_EQ(a.ignored_fields, (std::vector<std::string>{"messages[2].tool_calls", "messages[3].name"}));
}

TEST(OpenAIRequest, APlainPromptIsSplitByTheDocumentedRule) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 20; ++trial) {
    std::string doc;
    const int words = 50 + static_cast<int>(rng() % 2000);
    for (int w = 0; w < words; ++w) doc += (w % 17 == 16 ? "\n\n" : " ") + std::to_string(rng() % 1000);
    const std::string prompt = doc + "\n\nQuestion: which number came first?\nAnswer:";
    const ApiRequest a = parse_api_request(kCompletions, json{{"prompt", prompt}}.dump());
    ASSERT_EQ(a.choices.size(), 1u);
    const PlainPromptSplit want = split_plain_prompt(prompt, kPlainPromptLimits);
    EXPECT_EQ(a.choices[0].prompt.context_text, want.context);
    EXPECT_EQ(a.choices[0].prompt.query_text, "Question: which number came first?\nAnswer:");
    EXPECT_EQ(a.choices[0].prompt.context_text + a.choices[0].prompt.query_text, prompt);
  }
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":""})"), "prompt");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":["a",""]})"), "prompt");
  EXPECT_EQ(param_of(kCompletions, R"({"max_tokens":3})"), "prompt");
}

TEST(OpenAIRequest, PromptListsAndNMakeOneChoiceEach) {
  const ApiRequest a = parse_api_request(
      kCompletions, R"({"prompt":["doc one\n\nfirst?","doc two\n\nsecond?"],"n":3,"temperature":0.7,"seed":40})");
  ASSERT_EQ(a.choices.size(), 6u);
  EXPECT_EQ(a.n, 3);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(a.choices[i].prompt.query_text, i < 3 ? "first?" : "second?") << i;
    EXPECT_EQ(a.choices[i].sampling.seed, 40u + i % 3) << i;  // distinct per copy, reproducible
  }
  // Greedy copies are the same request.
  const ApiRequest g = parse_api_request(kCompletions, R"({"prompt":"x\ny","n":2,"seed":9})");
  ASSERT_EQ(g.choices.size(), 2u);
  EXPECT_EQ(g.choices[0].sampling.seed, g.choices[1].sampling.seed);
  // The explicit query applies to every prompt of the list.
  const ApiRequest q = parse_api_request(kCompletions, R"({"prompt":["a","b"],"query":"q"})");
  ASSERT_EQ(q.choices.size(), 2u);
  EXPECT_EQ(q.choices[1].prompt.context_text, "b");
  EXPECT_EQ(q.choices[1].prompt.query_text, "q");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":"p","n":0})"), "n");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":"p","n":129})"), "n");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":["a","b","c"],"n":50})"), "n");
  EXPECT_EQ(param_of(kChat, R"({"messages":[{"role":"user","content":"a"}],"n":2.5})"), "n");
  EXPECT_EQ(parse_api_request(kChat, R"({"messages":[{"role":"user","content":"a"}],"n":4})").choices.size(), 4u);
}

TEST(OpenAIRequest, TokenIdPromptsGoToTheIdFields) {
  std::mt19937 rng(6);
  for (size_t len : {1u, 7u, 511u, 512u, 513u, 3000u}) {
    std::vector<int32_t> ids(len);
    for (auto& id : ids) id = static_cast<int32_t>(rng() % 49152);
    const ApiRequest a = parse_api_request(kCompletions, json{{"prompt", ids}, {"max_tokens", 2}}.dump());
    ASSERT_EQ(a.choices.size(), 1u);
    const RequestSpec& r = a.choices[0];
    EXPECT_FALSE(r.prompt.context_is_text || r.prompt.query_is_text);
    const size_t q = std::min(len, kPlainPromptLimits.max_query_tokens);
    ASSERT_EQ(r.prompt.query.size(), q);
    std::vector<int32_t> joined = r.prompt.context;
    joined.insert(joined.end(), r.prompt.query.begin(), r.prompt.query.end());
    EXPECT_EQ(joined, ids);
  }
  const ApiRequest lists = parse_api_request(kCompletions, R"({"prompt":[[1,2,3],[4,5]],"n":2})");
  ASSERT_EQ(lists.choices.size(), 4u);
  EXPECT_EQ(lists.choices[2].prompt.query, (std::vector<int32_t>{4, 5}));
  const ApiRequest explicit_query = parse_api_request(kCompletions, R"({"prompt":[1,2,3],"query":[9,8]})");
  EXPECT_EQ(explicit_query.choices[0].prompt.context, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(explicit_query.choices[0].prompt.query, (std::vector<int32_t>{9, 8}));
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":[1,"a"]})"), "prompt");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":[1,-2]})"), "prompt");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":[[1],[]]})"), "prompt");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":[1.5]})"), "prompt");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":[]})"), "prompt");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":[1,2],"query":"text"})"), "query");
}

TEST(OpenAIRequest, UnknownFieldsAreIgnoredAndListed) {
  const ApiRequest a = parse_api_request(
      kCompletions, R"({"prompt":"p","query":"q","bogus":1,"logprobs":false,"presence_penalty":0,
                        "stream_options":{"include_usage":false,"later":1},"echo":false,"suffix":null,
                        "best_of":1,"messages":[]})");
  EXPECT_EQ(a.ignored_fields, (std::vector<std::string>{"bogus", "messages", "stream_options.later"}));
  EXPECT_EQ(a.logprobs, -1);
  EXPECT_FALSE(a.choices[0].logits.adjusts_logits());
  const ApiRequest chat = parse_api_request(
      kChat, R"({"messages":[{"role":"user","content":"a"}],"prompt":"x","tools":[],"response_format":{"type":"text"},
                 "parallel_tool_calls":true,"store":false})");
  EXPECT_EQ(chat.ignored_fields, (std::vector<std::string>{"parallel_tool_calls", "prompt", "store"}));
}

TEST(OpenAIRequest, FeaturesTheServerLacksAreRefusedByName) {
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":"p","echo":true})"), "echo");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":"p","suffix":"end"})"), "suffix");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":"p","best_of":3,"n":2})"), "best_of");
  EXPECT_EQ(param_of(kChat, R"({"messages":[{"role":"user","content":"a"}],"tools":[{"type":"function"}]})"), "tools");
  EXPECT_EQ(param_of(kChat, R"({"messages":[{"role":"user","content":"a"}],"response_format":{"type":"json_object"}})"),
            "response_format");
}

TEST(OpenAIRequest, PenaltiesBiasAndLogprobsMapToLogitsProcessing) {
  const ApiRequest a = parse_api_request(
      kCompletions, R"({"prompt":"p","presence_penalty":1.5,"frequency_penalty":-0.25,
                        "logit_bias":{"17":-100,"4":2.5},"logprobs":3})");
  const LogitsProcessing& l = a.choices[0].logits;
  EXPECT_FLOAT_EQ(l.presence_penalty, 1.5f);
  EXPECT_FLOAT_EQ(l.frequency_penalty, -0.25f);
  std::vector<std::pair<int32_t, float>> bias = l.logit_bias;
  std::sort(bias.begin(), bias.end());
  EXPECT_EQ(bias, (std::vector<std::pair<int32_t, float>>{{4, 2.5f}, {17, -100.0f}}));
  EXPECT_EQ(l.top_logprobs, 3);
  EXPECT_EQ(a.logprobs, 3);
  const std::string msgs = R"("messages":[{"role":"user","content":"a"}])";
  EXPECT_EQ(parse_api_request(kChat, "{" + msgs + R"(,"logprobs":true})").logprobs, 0);
  EXPECT_EQ(parse_api_request(kChat, "{" + msgs + R"(,"logprobs":true,"top_logprobs":5})").choices[0].logits.top_logprobs, 5);
  EXPECT_EQ(parse_api_request(kChat, "{" + msgs + R"(,"logprobs":false})").logprobs, -1);
  // Ranges as OpenAI documents them, each error naming its field.
  EXPECT_EQ(param_of(kChat, "{" + msgs + R"(,"top_logprobs":2})"), "top_logprobs");
  EXPECT_EQ(param_of(kChat, "{" + msgs + R"(,"logprobs":true,"top_logprobs":21})"), "top_logprobs");
  EXPECT_EQ(param_of(kChat, "{" + msgs + R"(,"logprobs":3})"), "logprobs");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":"p","logprobs":21})"), "logprobs");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":"p","presence_penalty":2.01})"), "presence_penalty");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":"p","frequency_penalty":-3})"), "frequency_penalty");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":"p","frequency_penalty":"1"})"), "frequency_penalty");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":"p","logit_bias":{"5":101}})"), "logit_bias[5]");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":"p","logit_bias":{"-5":1}})"), "logit_bias");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":"p","logit_bias":{"abc":1}})"), "logit_bias");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":"p","logit_bias":{"99999999999":1}})"), "logit_bias");
  EXPECT_EQ(param_of(kCompletions, R"({"prompt":"p","logit_bias":[1]})"), "logit_bias");
}

TEST(OpenAIRequest, RefusesBadRequestsNamingTheField) {
  const auto c = kCompletions;
  EXPECT_EQ(error_of(c, "{not json").status, 400);
  EXPECT_EQ(error_of(c, "[1,2]").status, 400);
  EXPECT_EQ(error_of(c, "").status, 400);
  EXPECT_EQ(param_of(c, R"({"prompt":"p","max_tokens":"5"})"), "max_tokens");
  EXPECT_EQ(param_of(c, R"({"prompt":"p","max_tokens":-1})"), "max_tokens");
  EXPECT_EQ(param_of(c, R"({"prompt":"p","max_tokens":2.5})"), "max_tokens");
  EXPECT_EQ(param_of(c, R"({"prompt":"p","temperature":"hot"})"), "temperature");
  EXPECT_EQ(param_of(c, R"({"prompt":"p","top_p":0})"), "top_p");
  EXPECT_EQ(param_of(c, R"({"prompt":"p","stream":"yes"})"), "stream");
  EXPECT_EQ(param_of(c, R"({"prompt":"p","stop":[1]})"), "stop");
  EXPECT_EQ(param_of(c, R"({"prompt":"p","mode":"half"})"), "mode");
  EXPECT_EQ(param_of(c, R"({"prompt":"p","block_size":4,"anchor_size":8})"), "anchor_size");
  EXPECT_EQ(param_of(c, R"({"prompt":"p","query":""})"), "query");
  EXPECT_EQ(param_of(c, R"({"query":"q"})"), "prompt");
  EXPECT_EQ(param_of(c, R"({"prompt":7})"), "prompt");
  EXPECT_EQ(param_of(kChat, R"({"messages":[{"role":"assistant","content":"a"}]})"), "messages");
  EXPECT_EQ(param_of(kChat, R"({"messages":[{"role":"wizard","content":"a"}]})"), "messages[0].role");
  EXPECT_EQ(param_of(kChat, R"({"messages":"hi"})"), "messages");
  EXPECT_EQ(param_of(kChat, R"({"model":"m"})"), "messages");
  // Deep nesting is refused before parsing.
  EXPECT_EQ(error_of(c, std::string(100000, '[') + std::string(100000, ']')).status, 400);
}

TEST(OpenAIRequest, ErrorJsonHasOpenAIShape) {
  const json j = json::parse(error_json(bad_request("max_tokens", "bad")));
  EXPECT_EQ(j["error"]["message"], "bad");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "max_tokens");
  EXPECT_TRUE(j["error"]["code"].is_null());
  const ApiError cap = service_error_to_api({ErrorKind::capacity, "too long"});
  EXPECT_EQ(cap.status, 400);
  EXPECT_EQ(cap.code, "context_length_exceeded");
  EXPECT_EQ(service_error_to_api({ErrorKind::overloaded, "busy"}).status, 503);
  EXPECT_EQ(service_error_to_api({ErrorKind::internal, "bug"}).status, 500);
}

// ---- models ----

ServiceInfo served(const std::string& name, bool names_tokens = true) {
  ServiceInfo info;
  info.model = name;
  if (names_tokens) info.token_bytes = [](int32_t id) { return "<" + std::to_string(id) + ">"; };
  return info;
}

TEST(OpenAIModels, OnlyTheServedNameIsKnown) {
  const ServiceInfo info = served("org/model-7b");
  EXPECT_NO_THROW(check_model("org/model-7b", info));
  EXPECT_NO_THROW(check_model("", info));  // a request that names none
  try {
    check_model("gpt-4o", info);
    FAIL() << "an unknown model was accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 404);
    EXPECT_EQ(e.code, "model_not_found");
    EXPECT_EQ(e.param, "model");
    EXPECT_NE(std::string(e.what()).find("gpt-4o"), std::string::npos);
  }
  std::string id;
  ASSERT_TRUE(model_path_id("/v1/models/org%2Fmodel-7b", id));
  EXPECT_EQ(id, "org/model-7b");
  ASSERT_TRUE(model_path_id("/v1/models/org/model-7b", id));
  EXPECT_EQ(id, "org/model-7b");
  EXPECT_FALSE(model_path_id("/v1/models/", id));
  EXPECT_FALSE(model_path_id("/v1/models", id));
  const json m = json::parse(model_json("org/model-7b", info));
  EXPECT_EQ(m["id"], "org/model-7b");
  EXPECT_EQ(m["object"], "model");
  EXPECT_THROW(model_json("other", info), ApiError);
  EXPECT_THROW(model_json("", info), ApiError);
  const json list = json::parse(models_json(info));
  ASSERT_EQ(list["data"].size(), 1u);
  EXPECT_EQ(list["data"][0], m);
}

TEST(OpenAIModels, LogprobsNeedAServiceThatNamesTokens) {
  const ApiRequest a = parse_api_request(kCompletions, R"({"prompt":"p","logprobs":2})");
  EXPECT_NO_THROW(check_for_service(a, served("m")));
  try {
    check_for_service(a, served("m", false));
    FAIL() << "logprobs were accepted without token names";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, "logprobs");
  }
}

// ---- responses ----

// Random logprobs: a chosen token and k alternatives in descending order, as token_logprob
// gives them.
TokenLogprob random_logprob(std::mt19937& rng, int k) {
  std::uniform_real_distribution<float> u(-8.0f, -0.01f);
  TokenLogprob lp;
  lp.token = static_cast<int32_t>(rng() % 1000);
  lp.logprob = u(rng);
  float top = -0.001f;
  for (int i = 0; i < k; ++i) {
    top -= std::uniform_real_distribution<float>(0.0f, 1.0f)(rng);
    lp.top.push_back({static_cast<int32_t>(1000 + rng() % 1000), top});
  }
  return lp;
}

std::string name_of(int32_t id) { return "<" + std::to_string(id) + ">"; }

TEST(OpenAIResponse, CompletionLogprobsHaveTheLegacyShape) {
  std::mt19937 rng(21);
  const ResponseMeta meta{"cmpl-1", "m", 7};
  ApiResponse r(kCompletions, meta, 1, 1, 2, name_of);
  std::vector<TokenLogprob> sent;
  std::string text;
  for (int i = 0; i < 6; ++i) {
    TokenEvent ev;
    ev.logprobs.push_back(random_logprob(rng, 2));
    ev.tokens.push_back(ev.logprobs.back().token);
    ev.text = i == 2 ? "" : name_of(ev.tokens[0]);  // one token's text held back
    text += ev.text;
    sent.push_back(ev.logprobs[0]);
    const json chunk = json::parse(r.add(0, ev));  // a chunk even without text: it has logprobs
    ASSERT_EQ(chunk["choices"][0]["logprobs"]["tokens"], json::array({name_of(ev.tokens[0])}));
  }
  RequestStats done;
  done.finish_reason = "length";
  done.context_tokens = 30;
  done.generated = 6;
  const json fin = json::parse(r.finish(0, done));
  EXPECT_EQ(fin["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(fin["choices"][0]["logprobs"].is_null());
  ASSERT_TRUE(r.all_finished());
  const json whole = json::parse(r.whole_json());
  const json& lp = whole["choices"][0]["logprobs"];
  EXPECT_EQ(whole["choices"][0]["text"], text);
  ASSERT_EQ(lp["tokens"].size(), sent.size());
  size_t offset = 0;
  for (size_t i = 0; i < sent.size(); ++i) {
    EXPECT_EQ(lp["tokens"][i], name_of(sent[i].token));
    EXPECT_NEAR(lp["token_logprobs"][i].get<double>(), sent[i].logprob, 1e-6);
    const json& top = lp["top_logprobs"][i];
    EXPECT_EQ(top.size(), 3u);  // k alternatives and the chosen token
    for (const auto& [id, v] : sent[i].top) EXPECT_NEAR(top[name_of(id)].get<double>(), v, 1e-6);
    EXPECT_NEAR(top[name_of(sent[i].token)].get<double>(), sent[i].logprob, 1e-6);
    EXPECT_EQ(lp["text_offset"][i], offset);
    offset += name_of(sent[i].token).size();
  }
  EXPECT_EQ(whole["usage"]["completion_tokens"], 6);
}

TEST(OpenAIResponse, ChatLogprobsHaveContentEntriesWithBytes) {
  std::mt19937 rng(22);
  ApiResponse r(kChat, {"chatcmpl-1", "m", 7}, 1, 1, 3, name_of);
  TokenEvent ev;
  for (int i = 0; i < 2; ++i) {
    ev.logprobs.push_back(random_logprob(rng, 3));
    ev.tokens.push_back(ev.logprobs.back().token);
  }
  ev.logprobs[1].logprob = -INFINITY;  // JSON has no -inf: OpenAI's -9999
  ev.text = "ab";
  const json chunk = json::parse(r.add(0, ev));
  const json& content = chunk["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(chunk["choices"][0]["delta"]["content"], "ab");
  for (size_t i = 0; i < 2; ++i) {
    const std::string name = name_of(ev.logprobs[i].token);
    EXPECT_EQ(content[i]["token"], name);
    std::vector<int> bytes(name.begin(), name.end());
    EXPECT_EQ(content[i]["bytes"], json(bytes));
    ASSERT_EQ(content[i]["top_logprobs"].size(), 3u);
    for (size_t k = 0; k < 3; ++k) {
      EXPECT_EQ(content[i]["top_logprobs"][k]["token"], name_of(ev.logprobs[i].top[k].first));
      EXPECT_NEAR(content[i]["top_logprobs"][k]["logprob"].get<double>(), ev.logprobs[i].top[k].second, 1e-6);
    }
  }
  EXPECT_NEAR(content[0]["logprob"].get<double>(), ev.logprobs[0].logprob, 1e-6);
  EXPECT_EQ(content[1]["logprob"], -9999.0);
  r.finish(0, RequestStats{});
  const json whole = json::parse(r.whole_json());
  EXPECT_EQ(whole["choices"][0]["logprobs"]["content"], content);
  EXPECT_TRUE(whole["choices"][0]["logprobs"]["refusal"].is_null());
}

TEST(OpenAIResponse, ChoicesAreIndexedAndUsageCountsEachPromptOnce) {
  // Two prompts, n = 2: choices 0,1 share prompt 0 and 2,3 prompt 1.
  ApiResponse r(kChat, {"chatcmpl-2", "m", 7}, 4, 2, -1, name_of);
  const std::vector<std::string> starts = r.stream_start();
  ASSERT_EQ(starts.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    const json s = json::parse(starts[i]);
    EXPECT_EQ(s["choices"][0]["index"], i);
    EXPECT_EQ(s["choices"][0]["delta"]["role"], "assistant");
  }
  for (size_t i : {3u, 0u, 2u, 1u}) {
    TokenEvent ev;
    ev.tokens = {static_cast<int32_t>(i)};
    ev.text = "choice" + std::to_string(i);
    const json chunk = json::parse(r.add(i, ev));
    EXPECT_EQ(chunk["choices"][0]["index"], i);
    EXPECT_TRUE(chunk["choices"][0]["logprobs"].is_null());
    EXPECT_FALSE(r.all_finished());
    RequestStats done;
    done.finish_reason = i % 2 ? "stop" : "cancelled";
    done.context_tokens = 100 + static_cast<int64_t>(i / 2) * 10;  // 100 for prompt 0, 110 for 1
    done.generated = 1 + static_cast<int64_t>(i);
    const json fin = json::parse(r.finish(i, done));
    EXPECT_EQ(fin["choices"][0]["index"], i);
    EXPECT_EQ(fin["choices"][0]["finish_reason"], "stop");
    EXPECT_TRUE(fin["choices"][0]["delta"].empty());
  }
  ASSERT_TRUE(r.all_finished());
  const json whole = json::parse(r.whole_json());
  ASSERT_EQ(whole["choices"].size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(whole["choices"][i]["index"], i);
    EXPECT_EQ(whole["choices"][i]["message"]["content"], "choice" + std::to_string(i));
  }
  EXPECT_EQ(whole["usage"]["prompt_tokens"], 210);
  EXPECT_EQ(whole["usage"]["completion_tokens"], 1 + 2 + 3 + 4);
  const json usage = json::parse(r.usage_chunk());
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["total_tokens"], 220);
}

TEST(OpenAIResponse, MissingLogprobsAreAServerErrorNotASilentGap) {
  ApiResponse r(kCompletions, {"cmpl-3", "m", 7}, 1, 1, 0, name_of);
  TokenEvent ev;
  ev.tokens = {5};
  ev.text = "x";
  try {
    r.add(0, ev);
    FAIL() << "a token without logprobs was accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 500);
  }
  // Events that carry no tokens (a decoder's tail) need none.
  TokenEvent tail;
  tail.text = "y";
  EXPECT_NO_THROW(r.add(0, tail));
}

TEST(OpenAIResponse, InvalidUtf8InGeneratedTextIsReplaced) {
  ApiResponse r(kCompletions, {"cmpl-1", "m", 1}, 1, 1, -1, name_of);
  TokenEvent ev;
  ev.text = "a\xff";
  const json j = json::parse(r.add(0, ev));
  EXPECT_EQ(j["choices"][0]["text"], "a\xEF\xBF\xBD");
}

// ---- the server, from a scripted service ----

// Generates `max_tokens` tokens at once on the submitting thread: token ids follow from the
// seed and the query, logprobs are made up but exact, so the test knows every value.
class ScriptedService : public GenerationService {
 public:
  static int32_t token_at(const RequestSpec& r, int step) {
    return static_cast<int32_t>((r.sampling.seed * 7 + r.prompt.query_text.size() + r.prompt.query.size() * 3 + step * 5) % 97);
  }
  static float logprob_at(int step) { return -0.25f - 0.125f * static_cast<float>(step); }

  std::shared_ptr<RequestHandle> submit(RequestSpec r, StreamCallbacks cb) override {
    submitted.fetch_add(1);
    for (int step = 0; step < r.max_tokens; ++step) {
      TokenEvent ev;
      ev.tokens = {token_at(r, step)};
      ev.text = name_of(ev.tokens[0]);
      if (r.logits.wants_logprobs()) {
        TokenLogprob lp;
        lp.token = ev.tokens[0];
        lp.logprob = logprob_at(step);
        for (int k = 0; k < r.logits.top_logprobs; ++k) lp.top.push_back({200 + k, -0.1f * static_cast<float>(k + 1)});
        ev.logprobs.push_back(lp);
      }
      if (!cb.on_token(ev)) break;
    }
    RequestStats done;
    done.finish_reason = "length";
    done.context_tokens = 10;
    done.generated = r.max_tokens;
    cb.on_done(done);
    return nullptr;
  }
  ServiceInfo info() const override { return served("scripted-model"); }
  std::vector<WorkerLoad> load() const override {
    std::lock_guard<std::mutex> lock(mutex);
    return workers;
  }
  int queued() const override { return 0; }
  void release_context(const std::string&) override {}
  std::atomic<int> submitted{0};
  mutable std::mutex mutex;
  std::vector<WorkerLoad> workers;
};

class OpenAIServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<HttpServer>(io_, service_, metrics_, HttpServerOptions{});
    thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    server_->stop();
    work_.reset();
    io_.stop();
    thread_.join();
  }

  // One request on a fresh connection; Beast undoes the chunked framing.
  std::pair<int, std::string> request(const std::string& method, const std::string& path, const std::string& body) {
    namespace http = boost::beast::http;
    boost::asio::io_context io;
    boost::asio::ip::tcp::socket socket(io);
    socket.connect({boost::asio::ip::make_address("127.0.0.1"), server_->port()});
    http::request<http::string_body> req(method == "GET" ? http::verb::get : http::verb::post, path, 11);
    req.set(http::field::host, "localhost");
    req.set(http::field::content_type, "application/json");
    req.body() = body;
    req.prepare_payload();
    http::write(socket, req);
    boost::beast::flat_buffer buffer;
    http::response<http::string_body> res;
    http::read(socket, buffer, res);
    return {static_cast<int>(res.result_int()), res.body()};
  }

  // The data events of a stream, [DONE] checked and left out.
  static std::vector<json> events(const std::string& body) {
    std::vector<json> out;
    bool done = false;
    for (size_t pos = 0; (pos = body.find("data: ", pos)) != std::string::npos;) {
      const size_t end = body.find("\n\n", pos);
      const std::string data = body.substr(pos + 6, end - pos - 6);
      pos = end;
      if (data == "[DONE]") done = true;
      else out.push_back(json::parse(data));
    }
    EXPECT_TRUE(done) << body;
    return out;
  }

  ScriptedService service_;
  Metrics metrics_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_ = boost::asio::make_work_guard(io_);
  std::unique_ptr<HttpServer> server_;
  std::thread thread_;
};

TEST_F(OpenAIServerTest, HealthIsDegradedNamingAWorkerThatStoppedAnswering) {
  auto [status, body] = request("GET", "/health", "");
  EXPECT_EQ(status, 200);
  EXPECT_EQ(json::parse(body)["status"], "ok") << body;
  {
    std::lock_guard<std::mutex> lock(service_.mutex);
    service_.workers = {{"w0", 10, 1, "", {}}, {"w1", 0, 0, "context worker w1 stopped answering: no heartbeat for 5012 ms", {}}};
  }
  std::tie(status, body) = request("GET", "/health", "");
  EXPECT_EQ(status, 200);  // still serving, on the workers left
  const json h = json::parse(body);
  EXPECT_EQ(h["status"], "degraded") << body;
  ASSERT_EQ(h["unhealthy_workers"].size(), 1u) << body;
  EXPECT_EQ(h["unhealthy_workers"][0]["worker"], "w1");
  EXPECT_NE(h["unhealthy_workers"][0]["why"].get<std::string>().find("no heartbeat"), std::string::npos);
  {
    std::lock_guard<std::mutex> lock(service_.mutex);
    service_.workers[1].unhealthy.clear();
  }
  std::tie(status, body) = request("GET", "/health", "");
  EXPECT_EQ(json::parse(body)["status"], "ok") << body;
}

TEST_F(OpenAIServerTest, NChoicesStreamedAndWholeWithLogprobs) {
  const json req{{"model", "scripted-model"}, {"prompt", "doc\n\nwhy?"}, {"n", 3}, {"temperature", 0.5},
                 {"seed", 4}, {"max_tokens", 4}, {"logprobs", 2}};
  const auto [status, body] = request("POST", "/v1/completions", req.dump());
  ASSERT_EQ(status, 200) << body;
  const json whole = json::parse(body);
  ASSERT_EQ(whole["choices"].size(), 3u);
  RequestSpec expect;
  expect.prompt.query_text = "why?";
  for (size_t i = 0; i < 3; ++i) {
    expect.sampling.seed = 4 + i;
    const json& c = whole["choices"][i];
    EXPECT_EQ(c["index"], i);
    std::string text;
    for (int s = 0; s < 4; ++s) {
      const std::string name = name_of(ScriptedService::token_at(expect, s));
      text += name;
      EXPECT_EQ(c["logprobs"]["tokens"][s], name);
      EXPECT_EQ(c["logprobs"]["token_logprobs"][s].get<double>(), ScriptedService::logprob_at(s));
      EXPECT_EQ(c["logprobs"]["top_logprobs"][s].size(), 3u);
    }
    EXPECT_EQ(c["text"], text);
  }
  EXPECT_EQ(whole["usage"]["prompt_tokens"], 10);  // one prompt
  EXPECT_EQ(whole["usage"]["completion_tokens"], 12);

  json streamed = req;
  streamed["stream"] = true;
  streamed["stream_options"] = {{"include_usage", true}};
  const auto [s2, body2] = request("POST", "/v1/completions", streamed.dump());
  ASSERT_EQ(s2, 200);
  std::vector<std::string> texts(3);
  std::vector<int> finishes(3, 0);
  bool usage = false;
  for (const json& e : events(body2)) {
    if (e.contains("usage") && !e["usage"].is_null()) {
      usage = true;
      EXPECT_EQ(e["usage"]["completion_tokens"], 12);
      continue;
    }
    const json& c = e["choices"][0];
    const size_t i = c["index"];
    texts.at(i) += c["text"].get<std::string>();
    if (!c["finish_reason"].is_null()) ++finishes[i];
    else EXPECT_EQ(c["logprobs"]["tokens"].size(), 1u);
  }
  EXPECT_TRUE(usage);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(texts[i], whole["choices"][i]["text"]);
    EXPECT_EQ(finishes[i], 1);
  }
}

TEST_F(OpenAIServerTest, ChatStreamsRolesAndLogprobsPerChoice) {
  const json req{{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"n", 2}, {"max_tokens", 3},
                 {"logprobs", true}, {"top_logprobs", 1}, {"stream", true}, {"some_new_field", {1, 2}}};
  const auto [status, body] = request("POST", "/v1/chat/completions", req.dump());
  ASSERT_EQ(status, 200) << body;
  std::vector<int> roles(2, 0), tokens(2, 0);
  for (const json& e : events(body)) {
    const json& c = e["choices"][0];
    const size_t i = c["index"];
    if (c["delta"].contains("role")) ++roles.at(i);
    if (!c["logprobs"].is_null()) {
      const json& content = c["logprobs"]["content"];
      ASSERT_EQ(content.size(), 1u);
      EXPECT_EQ(content[0]["top_logprobs"].size(), 1u);
      EXPECT_EQ(content[0]["logprob"].get<double>(), ScriptedService::logprob_at(tokens[i]));
      ++tokens.at(i);
    }
  }
  EXPECT_EQ(roles, (std::vector<int>{1, 1}));
  EXPECT_EQ(tokens, (std::vector<int>{3, 3}));
}

TEST_F(OpenAIServerTest, ModelsByIdAndUnknownModels) {
  auto [status, body] = request("GET", "/v1/models/scripted-model", "");
  ASSERT_EQ(status, 200) << body;
  EXPECT_EQ(json::parse(body)["id"], "scripted-model");
  std::tie(status, body) = request("GET", "/v1/models/gpt-4o", "");
  EXPECT_EQ(status, 404);
  EXPECT_EQ(json::parse(body)["error"]["code"], "model_not_found");
  const int before = service_.submitted.load();
  std::tie(status, body) = request("POST", "/v1/completions", R"({"model":"gpt-4o","prompt":"p"})");
  EXPECT_EQ(status, 404);
  EXPECT_EQ(json::parse(body)["error"]["param"], "model");
  EXPECT_EQ(service_.submitted.load(), before);  // refused before any generation
  std::tie(status, body) = request("POST", "/v1/completions", R"({"prompt":"p","max_tokens":1})");
  EXPECT_EQ(status, 200);
  EXPECT_EQ(json::parse(body)["model"], "scripted-model");
}

}  // namespace
}  // namespace starattn::server
