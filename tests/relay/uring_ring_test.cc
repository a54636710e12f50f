// The real ring against the running kernel: the ops the engine relies on.
#include "relay/uring_ring.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "relay/probe.h"

namespace grelay::relay {
namespace {

struct Result final : Completion {
  int calls = 0;
  int32_t res = 0;
  uint32_t flags = 0;
  void complete(int32_t r, uint32_t f) noexcept override {
    ++calls;
    res = r;
    flags = f;
  }
};

class UringRingTest : public ::testing::Test {
protected:
  void SetUp() override {
    int err = 0;
    ring_ = UringRing::create(RingOptions{64, 256}, &err);
    if (!ring_) {
      GTEST_SKIP() << "io_uring unavailable here: " << explainSetupError(err);
    }
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds_), 0);
  }
  void TearDown() override {
    if (fds_[0] >= 0) {
      close(fds_[0]);
      close(fds_[1]);
    }
  }
  void runUntil(const Result& r) {
    __kernel_timespec ts{1, 0};
    for (int i = 0; i < 5 && r.calls == 0; ++i) {
      ring_->run(&ts);
    }
  }

  std::unique_ptr<UringRing> ring_;
  int fds_[2] = {-1, -1};
};

TEST_F(UringRingTest, ReceiveSelectsAProvidedBufferAndSendUsesIt) {
  int err = 0;
  auto buffers = ring_->registerBuffers(3, 4, 4096, &err);
  ASSERT_NE(buffers, nullptr) << strerror(-err);
  ASSERT_EQ(write(fds_[1], "grelay", 6), 6);
  Result recv;
  ring_->recvSelect(fds_[0], 3, 4096, &recv);
  runUntil(recv);
  ASSERT_EQ(recv.res, 6);
  ASSERT_TRUE(recv.flags & IORING_CQE_F_BUFFER);
  uint16_t id = static_cast<uint16_t>(recv.flags >> IORING_CQE_BUFFER_SHIFT);
  EXPECT_EQ(std::memcmp(buffers->address(id), "grelay", 6), 0);

  Result send;
  ring_->send(fds_[0], buffers->address(id), 6, MSG_NOSIGNAL, &send);
  runUntil(send);
  EXPECT_EQ(send.res, 6);
  char back[6];
  ASSERT_EQ(read(fds_[1], back, 6), 6);
  EXPECT_EQ(std::memcmp(back, "grelay", 6), 0);
  buffers->recycle(id);
}

TEST_F(UringRingTest, EmptyBufferRingGivesEnobufs) {
  int err = 0;
  auto buffers = ring_->registerBuffers(4, 1, 64, &err);
  ASSERT_NE(buffers, nullptr);
  ASSERT_EQ(write(fds_[1], "ab", 2), 2);
  Result first;
  ring_->recvSelect(fds_[0], 4, 1, &first);
  runUntil(first);
  ASSERT_EQ(first.res, 1);
  Result second;
  ring_->recvSelect(fds_[0], 4, 1, &second);
  runUntil(second);
  EXPECT_EQ(second.res, -ENOBUFS);
}

TEST_F(UringRingTest, CancelEndsAPendingReceive) {
  char buf[16];
  Result recv;
  ring_->recv(fds_[0], buf, sizeof(buf), &recv);
  ring_->submit();
  Result cancel;
  ring_->cancel(&recv, &cancel);
  runUntil(recv);
  EXPECT_EQ(recv.res, -ECANCELED);
}

TEST(ProbeTest, StockKernelReportsMainlineAndNoGroups) {
  Features f = probeFeatures();
  if (!f.uringAvailable) {
    GTEST_SKIP() << f.unavailableWhy;
  }
  EXPECT_TRUE(f.providedBufferRings);
  if (!f.groupKernelBuffers) {
    EXPECT_EQ(f.autoPath(), config::RelayPath::Mainline);
    EXPECT_FALSE(f.pathAvailable(config::RelayPath::Group));
    EXPECT_NE(f.pathMissing(config::RelayPath::Group).find("kernel/"), std::string::npos);
  } else {
    EXPECT_EQ(f.autoPath(), config::RelayPath::Group);
  }
}

TEST(ProbeTest, SetupErrorsExplainCauseAndFix) {
  EXPECT_NE(explainSetupError(-EPERM).find("seccomp"), std::string::npos);
  EXPECT_NE(explainSetupError(-ENOSYS).find("CONFIG_IO_URING"), std::string::npos);
}

}  // namespace
}  // namespace grelay::relay
