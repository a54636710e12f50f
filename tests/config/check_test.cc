// `grelay -c FILE --check`: output and exit status.
#include <gtest/gtest.h>

#include <sstream>

#include "config/check.h"
#include "tests/config/test_util.h"

namespace grelay::config {
namespace {

using test::TempDir;

TEST(CheckTest, ValidFilePrintsASummaryAndReturnsZero) {
  std::string path = std::string(GRELAY_SOURCE_DIR) + "/config/examples/full.toml";
  std::ostringstream out, err;
  EXPECT_EQ(runCheck(path, out, err), 0);
  EXPECT_EQ(out.str(), path + ": ok (2 listeners, 2 upstreams, 2 mirrors, 1 tap, 1 route)\n");
  EXPECT_EQ(err.str(), "");
}

TEST(CheckTest, SummaryUsesSingularForOne) {
  std::string path = std::string(GRELAY_SOURCE_DIR) + "/config/examples/demo.toml";
  std::ostringstream out, err;
  EXPECT_EQ(runCheck(path, out, err), 0);
  EXPECT_EQ(out.str(), path + ": ok (1 listener, 1 upstream, 1 mirror, 1 tap)\n");
}

TEST(CheckTest, WarningsGoToErrAndTheFileIsStillOk) {
  TempDir dir;
  std::string path = dir.write("warn.toml", R"([upstream.app]
servers = ["127.0.0.1:8000"]
check_interval = "10s"
resolve_interval = "5s"

[[listener]]
name = "web"
listen = "0.0.0.0:8080"
upstream = "app"
accept_proxy_protocol = true
)");
  std::ostringstream out, err;
  EXPECT_EQ(runCheck(path, out, err), 0);
  EXPECT_EQ(out.str(), path + ": ok (1 listener, 1 upstream, 0 mirrors, 0 taps)\n");
  EXPECT_EQ(err.str(),
            path +
                ":1:1: warning: upstream app: check_interval (10s) is not below fail_timeout "
                "(10s): a dead server rejoins the rotation between checks\n" +
                path +
                ":1:1: warning: upstream app: resolve_interval has no effect: every server is "
                "an IP address\n" +
                path +
                ":6:1: warning: listener web: takes PROXY protocol headers from any peer, and a "
                "header can claim any client address: set proxy_protocol_from to the load "
                "balancers' networks\n");
}

TEST(CheckTest, EveryErrorGoesToErrOneLineEachAndReturnsOne) {
  TempDir dir;
  std::string path = dir.write("bad.toml", "[server]\nworkers = \"two\"\nfoo = 1\n");
  std::ostringstream out, err;
  EXPECT_EQ(runCheck(path, out, err), 1);
  EXPECT_EQ(out.str(), "");
  EXPECT_EQ(err.str(), path + ":1:1: no upstream defined (add an [upstream.NAME] table)\n" + path +
                           ":1:1: no listener defined (add a [[listener]] table)\n" + path +
                           ":2:11: 'workers' must be an integer, got string\n" + path +
                           ":3:1: unknown key 'foo' in [server]\n");
}

TEST(CheckTest, UnreadableFileIsReported) {
  std::ostringstream out, err;
  EXPECT_EQ(runCheck("/nonexistent.toml", out, err), 1);
  EXPECT_EQ(err.str(), "/nonexistent.toml:1:1: cannot read config: No such file or directory\n");
}

}  // namespace
}  // namespace grelay::config
