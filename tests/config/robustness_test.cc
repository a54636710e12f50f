// loadString() must survive any input: random bytes, TOML-ish token soup and
// mutations of the example files. It must not throw or crash, and its result must
// stay consistent (config iff no errors; errors sorted, positioned, in this file).
// The same entry point backs the libFuzzer target; this is its quick regression run.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "config/loader.h"

namespace grelay::config {
namespace {

void expectConsistent(const std::string& input) {
  LoadResult result;
  ASSERT_NO_THROW(result = loadString(input, "fuzz.toml")) << testing::PrintToString(input);
  EXPECT_EQ(result.config.has_value(), result.errors.empty());
  for (size_t i = 0; i < result.errors.size(); ++i) {
    const ConfigError& error = result.errors[i];
    EXPECT_EQ(error.where.file, "fuzz.toml");
    EXPECT_GE(error.where.line, 1u);
    EXPECT_GE(error.where.column, 1u);
    EXPECT_FALSE(error.message.empty());
    if (i > 0) {
      const Location& before = result.errors[i - 1].where;
      EXPECT_LE(std::tie(before.line, before.column),
                std::tie(error.where.line, error.where.column));
    }
  }
}

std::vector<std::string> exampleFiles() {
  std::vector<std::string> texts;
  auto dir = std::filesystem::path(GRELAY_SOURCE_DIR) / "config/examples";
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path());
    std::stringstream text;
    text << in.rdbuf();
    texts.push_back(text.str());
  }
  return texts;
}

TEST(RobustnessTest, RandomBytesNeverThrow) {
  std::mt19937 random(1234);
  for (int i = 0; i < 300; ++i) {
    std::string input(random() % 200, '\0');
    for (char& c : input)
      c = static_cast<char>(random());
    expectConsistent(input);
  }
}

TEST(RobustnessTest, TokenSoupNeverThrows) {
  static const char* kTokens[] = {
      "[server]",
      "[admin]",
      "[upstream.a]",
      "[[listener]]",
      "[[listener.mirror]]",
      "[listener.tap]",
      "[listener.tls]",
      "\n",
      " = ",
      "name",
      "listen",
      "upstream",
      "servers",
      "tls",
      "mirror",
      "tap",
      "workers",
      "chunk_size",
      "buffer_pool",
      "max_lag",
      "path",
      "{",
      "}",
      "[",
      "]",
      ",",
      "\"a\"",
      "\"127.0.0.1:1\"",
      "\"[::1]:2\"",
      "\"5s\"",
      "\"64KiB\"",
      "\"1h30m\"",
      "1",
      "-1",
      "0",
      "1.5",
      "true",
      "9223372036854775807",
      "\"\"",
      "'x'",
      "#",
      "\"\\u0000\"",
      "1979-05-27T07:32:00Z",
      "a.b.c",
      "\"auto\"",
      "\"both\"",
      "[[listener]]\n",
  };
  std::mt19937 random(99);
  for (int i = 0; i < 400; ++i) {
    std::string input;
    for (int n = random() % 40; n > 0; --n)
      input += kTokens[random() % std::size(kTokens)];
    expectConsistent(input);
  }
}

TEST(RobustnessTest, MutatedExamplesNeverThrow) {
  std::vector<std::string> seeds = exampleFiles();
  ASSERT_FALSE(seeds.empty());
  std::mt19937 random(7);
  for (int i = 0; i < 400; ++i) {
    std::string input = seeds[random() % seeds.size()];
    for (int edits = 1 + random() % 4; edits > 0 && !input.empty(); --edits) {
      size_t at = random() % input.size();
      switch (random() % 5) {
        case 0:
          input[at] = static_cast<char>(random());
          break;  // flip a byte
        case 1:
          input.insert(at, 1, static_cast<char>(random() % 128));
          break;  // insert
        case 2:
          input.erase(at, random() % 16);
          break;  // delete a run
        case 3:
          input.resize(at);
          break;  // truncate
        case 4:
          input.insert(at, input.substr(random() % input.size(), 40));
          break;  // splice
      }
    }
    expectConsistent(input);
  }
}

}  // namespace
}  // namespace grelay::config
