#include "relay/buffer.h"

#include <gtest/gtest.h>

#include "tests/relay/fake_ring.h"

namespace grelay::relay {
namespace {

TEST(ProvidedBufferPoolTest, BufferReturnsToTheKernelWhenTheLastLeaseIsGone) {
  testing::FakeRing ring;
  int err = 0;
  ProvidedBufferPool pool(ring.registerBuffers(0, 4, 1024, &err));
  auto* fake = ring.buffers();
  int id = fake->pick();
  ChunkRef a = pool.take(static_cast<uint16_t>(id), 100);
  ChunkRef b = a;  // second consumer
  EXPECT_EQ(pool.leased(), 1u);
  a.reset();
  EXPECT_EQ(fake->recycled(), 0u);
  b.reset();
  EXPECT_EQ(fake->recycled(), 1u);
  EXPECT_EQ(pool.leased(), 0u);
}

struct CountingListener final : ProvidedBufferPool::Listener {
  int calls = 0;
  void onBuffersAvailable() noexcept override { ++calls; }
};

TEST(ProvidedBufferPoolTest, ToldWhenBuffersComeBack) {
  testing::FakeRing ring;
  int err = 0;
  ProvidedBufferPool pool(ring.registerBuffers(0, 2, 64, &err));
  CountingListener listener;
  pool.setListener(&listener);
  { ChunkRef c = pool.take(0, 10); }
  EXPECT_EQ(listener.calls, 1);
}

TEST(UserBufferPoolTest, CapIsHardAndBuffersAreReused) {
  UserBufferPool pool(512, 2);
  ChunkRef a = pool.allocate();
  ChunkRef b = pool.allocate();
  ASSERT_TRUE(a && b);
  EXPECT_FALSE(pool.allocate());
  uint8_t* first = a.mutableData();
  a.reset();
  ChunkRef c = pool.allocate();
  ASSERT_TRUE(c);
  EXPECT_EQ(c.mutableData(), first);
  EXPECT_EQ(pool.leased(), 2u);
}

}  // namespace
}  // namespace grelay::relay
