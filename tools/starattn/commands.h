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

}  // namespace starattn::cli
