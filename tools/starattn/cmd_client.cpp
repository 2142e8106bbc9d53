// starattn client: one request over the framed TCP protocol, the answer streamed to stdout.
#include <chrono>
#include <cstdio>
#include <cstring>

#include "server/client.h"
#include "server/framed_protocol.h"
#include "tools/starattn/args.h"
#include "tools/starattn/commands.h"
#include "tools/starattn/front_ends.h"
#include "transport/address.h"

namespace starattn::cli {
namespace {

const char* kClientHelp =
    "usage: starattn client --connect HOST:PORT (--context-file F | --context TEXT) --query Q [options]\n"
    "Sends one request to a server's framed TCP port (starattn serve-local --tcp ...) and\n"
    "streams the answer to stdout; statistics go to stderr.\n\n"
    "  --max-tokens N        tokens to generate at most (default 64)\n"
    "  --mode star|full      attention mode (default star)\n"
    "  --block-size B        context block size; --anchor-size A the anchor\n"
    "  --temperature T       0 = greedy (default); with --top-k K, --top-p P, --seed S\n"
    "  --stop TEXT           stop before this text (repeat with commas: --stop 'a,b')\n"
    "  --ignore-eos          generate exactly --max-tokens tokens\n"
    "  --output text|ids     decoded text (default) or token ids\n"
    "  --api-key-env VAR     send the API key in $VAR first (a server started with --api-key-env\n"
    "                        refuses requests without it)\n";

}  // namespace

int cmd_client(int argc, char** argv) {
  if (argc > 2 && !std::strcmp(argv[2], "--help")) {
    std::fputs(kClientHelp, stdout);
    return 0;
  }
  const Args args(argc, argv, 2,
                  {"connect", "context-file", "context", "query", "max-tokens", "mode", "block-size",
                   "anchor-size", "temperature", "top-k", "top-p", "seed", "stop", "output", "api-key-env"},
                  {"ignore-eos"});
  if (args.has("context-file") == args.has("context"))
    throw std::invalid_argument("give exactly one of --context-file and --context");
  const std::string output = args.get("output", "text");
  if (output != "text" && output != "ids")
    throw std::invalid_argument("--output must be text or ids, got '" + output + "'");
  RequestSpec r;
  r.prompt.context_is_text = r.prompt.query_is_text = true;
  r.prompt.context_text =
      args.has("context") ? args.get("context", "") : read_file(args.get("context-file", ""));
  r.prompt.query_text = args.require("query");
  r.block_size = args.get_int("block-size", 0);
  r.anchor_size = args.get_int("anchor-size", 0);
  r.max_tokens = static_cast<int>(args.get_int("max-tokens", 64));
  r.sampling.temperature = static_cast<float>(args.get_double("temperature", 0.0));
  r.sampling.top_k = static_cast<int>(args.get_int("top-k", 0));
  r.sampling.top_p = static_cast<float>(args.get_double("top-p", 1.0));
  r.sampling.seed = static_cast<uint64_t>(args.get_int("seed", 0));
  r.ignore_eos = args.flag("ignore-eos");
  if (args.has("stop")) {
    const std::string stops = args.get("stop", "");
    size_t start = 0;
    for (size_t comma; (comma = stops.find(',', start)) != std::string::npos; start = comma + 1)
      r.stop_strings.push_back(stops.substr(start, comma - start));
    r.stop_strings.push_back(stops.substr(start));
  }
  const auto address = transport::parse_host_port(args.require("connect"), "--connect");
  server::Client client(address.host, address.port, std::chrono::seconds(10), api_key(args));
  bool first = true;
  // The mode goes as given: the server refuses an unknown one (invalid_request).
  serving::GenerateRequest wire = server::request_to_proto(r);
  wire.set_mode(args.get("mode", "star"));
  const RequestStats c = client.generate(wire, [&](const TokenEvent& ev) {
    if (output == "ids") {
      for (int32_t id : ev.tokens) std::printf(first ? "%d" : " %d", id), first = false;
    } else {
      std::fwrite(ev.text.data(), 1, ev.text.size(), stdout);
    }
    std::fflush(stdout);
    return true;
  });
  std::printf("\n");
  std::fprintf(stderr,
               "context %lld tokens, %d blocks of %lld (anchor %lld); phase 1 %.1f ms, first token "
               "%.1f ms, decode %.1f ms; %lld tokens, finish: %s\n",
               static_cast<long long>(c.context_tokens), c.blocks, static_cast<long long>(c.block_size),
               static_cast<long long>(c.anchor_size), c.phase1_ms, c.first_token_ms, c.decode_ms,
               static_cast<long long>(c.generated), c.finish_reason.c_str());
  return 0;
}

}  // namespace starattn::cli
