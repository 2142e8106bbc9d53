// Subcommands of the starattn command line; each parses argv from index 2.
#pragma once

namespace starattn::cli {

int cmd_run(int argc, char** argv);
int cmd_init_model(int argc, char** argv);
int cmd_serve(int argc, char** argv);
int cmd_worker(int argc, char** argv);
int cmd_bench_transport(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_serve_local(int argc, char** argv);
int cmd_client(int argc, char** argv);
int cmd_eval(int argc, char** argv);

// starattn bench reuse (cmd_bench_reuse.cpp), dispatched by cmd_bench.
class Args;
extern const char* kBenchReuseHelp;
int bench_reuse(const Args& args);
// starattn bench interleave (cmd_bench_interleave.cpp), dispatched by cmd_bench.
extern const char* kBenchInterleaveHelp;
int bench_interleave(const Args& args);

}  // namespace starattn::cli
