// The control plane's mutual TLS, as processes: certificates made at test time by
// deploy/make-certs.sh (the openssl tool) into a temp dir; a head with certificates admits only
// workers and clients whose certificate the cluster CA signed (none, another CA's, or another
// CA's while trusting ours are all turned away), and answers a certified client right. Without
// certificates `serve` and `worker` refuse to listen beyond loopback unless --insecure is given.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/test_models.h"

namespace {

using namespace std::chrono_literals;

std::string cli() {
  const char* env = std::getenv("STARATTN_CLI");
  return env ? env : STARATTN_CLI;
}

// deploy/make-certs.sh of this source tree.
std::string make_certs_script() { return std::string(STARATTN_SOURCE_DIR) + "/deploy/make-certs.sh"; }

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

int shell(const std::string& cmd) {
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

// `starattn ARGS...` as a child process with its output in files; killed when destroyed.
class Child {
 public:
  Child(const std::vector<std::string>& args, const std::string& log) : log_(log) {
    pid_ = fork();
    if (pid_ == 0) {
      if (!freopen((log + ".out").c_str(), "w", stdout) || !freopen((log + ".err").c_str(), "w", stderr))
        _exit(126);
      static std::string bin = cli();
      std::vector<char*> argv{bin.data()};
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(bin.c_str(), argv.data());
      _exit(127);
    }
  }
  ~Child() {
    if (pid_ > 0 && rc_ == kRunning) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  // Exit status, or -1 when still running after `limit`.
  int wait(std::chrono::milliseconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (rc_ == kRunning) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        rc_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      } else if (std::chrono::steady_clock::now() >= deadline) {
        return -1;
      } else {
        std::this_thread::sleep_for(20ms);
      }
    }
    return rc_;
  }
  std::string out() const { return slurp(log_ + ".out"); }
  std::string err() const { return slurp(log_ + ".err"); }

 private:
  static constexpr int kRunning = -2;
  pid_t pid_ = -1;
  int rc_ = kRunning;
  std::string log_;
};

class Tls : public ::testing::Test {
 protected:
  // Made by the first test of the process (a failure here fails that test rather than
  // skipping the suite, as one in SetUpTestSuite would under ctest).
  void SetUp() override {
    if (dir_) {
      ASSERT_TRUE(ready_) << "the model or the certificates could not be made (see the first test)";
      return;
    }
    dir_ = new starattn::testing::TempDir();
    const std::string d = dir_->path();
    ASSERT_EQ(shell(cli() + " init-model --preset tiny --seed 5 --out " + d + "/tiny 2>/dev/null"), 0);
    // The cluster's CA and certificates, and an outsider's CA with certificates of the same names.
    ASSERT_EQ(shell(make_certs_script() + " " + d + "/cluster head worker client 2>/dev/null"), 0);
    ASSERT_EQ(shell(make_certs_script() + " " + d + "/rogue worker client 2>/dev/null"), 0);
    // Trusting both CAs makes the outsider's own certificate check pass, so that only the head's
    // check of the certificate it is shown can stop it.
    std::ofstream(d + "/both-ca.crt") << slurp(d + "/rogue/ca.crt") << slurp(d + "/cluster/ca.crt");
    ready_ = true;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string path(const std::string& name) { return dir_->path() + "/" + name; }
  // --tls-* arguments for NAME's files under DIR, with `ca` as the trusted CA file.
  static std::vector<std::string> tls(const std::string& dir, const std::string& name,
                                      const std::string& ca = "") {
    return {"--tls-cert", path(dir + "/" + name + ".crt"), "--tls-key", path(dir + "/" + name + ".key"),
            "--tls-ca",   ca.empty() ? path(dir + "/ca.crt") : ca};
  }
  static std::vector<std::string> cat(std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }

  // Starts a head on loopback with the cluster's certificates; returns its port.
  int start_head() {
    const std::string pf = path("head.port");
    std::remove(pf.c_str());
    head_ = std::make_unique<Child>(
        cat({"serve", "--listen", "127.0.0.1:0", "--port-file", pf, "--model", path("tiny")},
            tls("cluster", "head")),
        path("head"));
    for (int i = 0; i < 500 && slurp(pf).empty(); ++i) std::this_thread::sleep_for(20ms);
    const int port = std::atoi(slurp(pf).c_str());
    EXPECT_GT(port, 0) << "the head did not start: " << head_->err();
    return port;
  }
  std::unique_ptr<Child> worker(int port, const std::string& name,
                                const std::vector<std::string>& tls_args) {
    return std::make_unique<Child>(
        cat({"worker", "--head", "127.0.0.1:" + std::to_string(port), "--model", path("tiny"),
             "--cpu-threads", "1", "--connect-timeout", "20", "--name", name},
            tls_args),
        path(name));
  }
  static std::vector<std::string> request(const std::string& context) {
    return {"--context-ids", context, "--query-ids", "5,6", "--max-tokens", "6", "--ignore-eos",
            "--output", "ids"};
  }
  std::unique_ptr<Child> client(int port, const std::string& name, const std::string& context,
                                const std::vector<std::string>& tls_args) {
    return std::make_unique<Child>(
        cat(cat({"run", "--head", "127.0.0.1:" + std::to_string(port), "--timeout", "30"},
                request(context)),
            tls_args),
        path(name));
  }

  static starattn::testing::TempDir* dir_;
  static bool ready_;
  std::unique_ptr<Child> head_;
};

starattn::testing::TempDir* Tls::dir_ = nullptr;
bool Tls::ready_ = false;

std::string random_ids(int n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s;
  for (int i = 0; i < n; ++i) s += (i ? "," : "") + std::to_string(rng() % 256);
  return s;
}

TEST_F(Tls, OnlyPeersCertifiedByTheClusterCaRegisterOrSubmit) {
  const int port = start_head();
  ASSERT_GT(port, 0);
  // Outsiders first, all at once: each must give up on its own (a refused handshake is final),
  // long before its 20 s connect timeout.
  const std::string ctx = random_ids(120, 11);
  std::vector<std::pair<std::string, std::unique_ptr<Child>>> outsiders;
  outsiders.emplace_back("worker without TLS", worker(port, "w_plain", {}));
  outsiders.emplace_back("worker of another CA", worker(port, "w_rogue", tls("rogue", "worker")));
  outsiders.emplace_back("worker of another CA trusting ours",
                         worker(port, "w_rogue_trusting", tls("rogue", "worker", path("both-ca.crt"))));
  outsiders.emplace_back("client without TLS", client(port, "c_plain", ctx, {}));
  outsiders.emplace_back("client of another CA", client(port, "c_rogue", ctx, tls("rogue", "client")));
  outsiders.emplace_back("client of another CA trusting ours",
                         client(port, "c_rogue_trusting", ctx, tls("rogue", "client", path("both-ca.crt"))));
  for (auto& [what, p] : outsiders) {
    const int rc = p->wait(15s);
    EXPECT_NE(rc, -1) << what << " still runs";
    EXPECT_NE(rc, 0) << what << " got in:\n" << p->out() << p->err();
    EXPECT_NE(p->err().find("handshake"), std::string::npos) << what << ": " << p->err();
    EXPECT_TRUE(p->out().empty()) << what << " received tokens: " << p->out();
  }
  EXPECT_EQ(head_->err().find("registered"), std::string::npos)
      << "an outsider registered:\n" << head_->err();
  EXPECT_EQ(head_->err().find("request"), std::string::npos)
      << "an outsider's request reached the scheduler:\n" << head_->err();

  // A certified worker registers and a certified client is answered, as a one-process run is.
  auto good = worker(port, "w_good", tls("cluster", "worker"));
  auto answer = client(port, "c_good", ctx, tls("cluster", "client"));
  ASSERT_EQ(answer->wait(60s), 0) << answer->err() << "\nhead:\n" << head_->err();
  Child local(cat({"run", "--model", path("tiny"), "--threads", "1"}, request(ctx)), path("local"));
  ASSERT_EQ(local.wait(60s), 0) << local.err();
  EXPECT_FALSE(local.out().empty());
  EXPECT_EQ(answer->out(), local.out());
  EXPECT_NE(head_->err().find("registered: w_good"), std::string::npos) << head_->err();
  EXPECT_EQ(head_->err().find("registered: w_rogue"), std::string::npos) << head_->err();
  EXPECT_EQ(head_->err().find("registered: w_plain"), std::string::npos) << head_->err();
}

TEST_F(Tls, TheHeadsPortSpeaksTlsAndDemandsAClientCertificate) {
  const int port = start_head();
  ASSERT_GT(port, 0);
  // OpenSSL's own client as an independent witness: with a certificate, a verified TLS session;
  // without, the head ends it with "certificate required" (TLS 1.3 sends that after the
  // handshake, hence the wait for the alert).
  const std::string connect = "openssl s_client -connect 127.0.0.1:" + std::to_string(port) +
                              " -CAfile " + path("cluster/ca.crt") + " -verify_return_error";
  ASSERT_EQ(shell("timeout 10 " + connect + " -cert " + path("cluster/client.crt") + " -key " +
                  path("cluster/client.key") + " < /dev/null > " + path("sc_good.txt") + " 2>&1"),
            0);
  const std::string good = slurp(path("sc_good.txt"));
  EXPECT_NE(good.find("Verify return code: 0 (ok)"), std::string::npos) << good;
  EXPECT_NE(good.find("TLSv1.3"), std::string::npos) << good;
  shell("sleep 1 | timeout 10 " + connect + " -ign_eof > " + path("sc_none.txt") + " 2>&1");
  const std::string none = slurp(path("sc_none.txt"));
  EXPECT_NE(none.find("certificate required"), std::string::npos) << none;
  // And the head itself presents a certificate our CA signed: a client trusting only the other
  // CA refuses it.
  const std::string rogue_trust = "openssl s_client -connect 127.0.0.1:" + std::to_string(port) +
                                  " -CAfile " + path("rogue/ca.crt") + " -verify_return_error";
  EXPECT_NE(shell("timeout 10 " + rogue_trust + " < /dev/null > " + path("sc_rogue.txt") + " 2>&1"), 0)
      << slurp(path("sc_rogue.txt"));
}

TEST_F(Tls, WithoutCertificatesOnlyLoopbackUnlessInsecure) {
  Child serve({"serve", "--listen", "0.0.0.0:0", "--model", path("tiny")}, path("open_serve"));
  EXPECT_EQ(serve.wait(30s), 1);
  EXPECT_NE(serve.err().find("without TLS"), std::string::npos) << serve.err();
  EXPECT_NE(serve.err().find("--insecure"), std::string::npos) << serve.err();
  Child worker({"worker", "--head", "127.0.0.1:1", "--model", path("tiny"), "--listen", "0.0.0.0:0"},
               path("open_worker"));
  EXPECT_EQ(worker.wait(30s), 1);
  EXPECT_NE(worker.err().find("without TLS"), std::string::npos) << worker.err();
  // --insecure makes it explicit: then it listens on every interface.
  const std::string pf = path("insecure.port");
  Child insecure({"serve", "--listen", "0.0.0.0:0", "--port-file", pf, "--model", path("tiny"),
                  "--insecure"},
                 path("insecure"));
  for (int i = 0; i < 500 && slurp(pf).empty(); ++i) std::this_thread::sleep_for(20ms);
  EXPECT_GT(std::atoi(slurp(pf).c_str()), 0) << insecure.err();
  EXPECT_NE(insecure.err().find("no TLS"), std::string::npos) << insecure.err();
}

TEST_F(Tls, BadCertificateFilesFailAtStartNamingTheFile) {
  struct Case {
    std::vector<std::string> tls;
    std::string says;
  };
  const std::vector<Case> cases{
      {{"--tls-cert", path("cluster/head.crt")}, "go together"},
      {{"--tls-cert", path("cluster/head.crt"), "--tls-key", path("cluster/worker.key"), "--tls-ca",
        path("cluster/ca.crt")},
       "worker.key"},
      {tls("rogue", "worker", path("cluster/ca.crt")), "does not verify against --tls-ca"},
      {{"--tls-cert", path("cluster/head.crt"), "--tls-key", path("cluster/head.key"), "--tls-ca",
        path("nowhere.crt")},
       "nowhere.crt"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    Child serve(cat({"serve", "--listen", "127.0.0.1:0", "--model", path("tiny")}, cases[i].tls),
                path("bad" + std::to_string(i)));
    EXPECT_EQ(serve.wait(30s), 1) << i;
    EXPECT_NE(serve.err().find(cases[i].says), std::string::npos) << i << ": " << serve.err();
  }
}

TEST_F(Tls, MakeCertsIsIdempotentAndKeepsKeysPrivate) {
  const std::string d = path("cluster");
  const std::string ca = slurp(d + "/ca.crt"), head = slurp(d + "/head.crt");
  ASSERT_FALSE(ca.empty());
  ASSERT_EQ(shell(make_certs_script() + " " + d + " head worker client extra 2>/dev/null"), 0);
  EXPECT_EQ(slurp(d + "/ca.crt"), ca) << "the CA was made again";
  EXPECT_EQ(slurp(d + "/head.crt"), head) << "a current certificate was made again";
  for (const std::string name : {"ca", "head", "worker", "client", "extra"}) {
    struct stat st {};
    ASSERT_EQ(stat((d + "/" + name + ".key").c_str(), &st), 0) << name;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << name << ".key";
  }
  EXPECT_EQ(shell("openssl verify -CAfile " + d + "/ca.crt " + d + "/extra.crt >/dev/null 2>&1"), 0);
  // A certificate that no longer verifies (here: another CA's) is made again.
  ASSERT_EQ(shell("cp " + path("rogue/worker.crt") + " " + d + "/extra.crt"), 0);
  ASSERT_EQ(shell(make_certs_script() + " " + d + " extra 2>/dev/null"), 0);
  EXPECT_EQ(shell("openssl verify -CAfile " + d + "/ca.crt " + d + "/extra.crt >/dev/null 2>&1"), 0);
}

}  // namespace
