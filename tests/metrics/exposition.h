// A small parser of the Prometheus text format for the tests: sample lines split into
// name, labels and value; HELP and TYPE comments collected per family.
#pragma once

#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace grelay::metrics::testing {

struct Sample {
  std::string name;
  std::vector<std::pair<std::string, std::string>> labels;
  std::string value;
  std::string line;
};

struct Exposition {
  std::vector<Sample> samples;
  std::map<std::string, std::string> help;  // family -> text
  std::map<std::string, std::string> type;  // family -> counter|gauge|histogram|...
};

inline Exposition parseExposition(const std::string& text) {
  Exposition out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) {
      continue;
    }
    if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
      const std::string rest = line.substr(7);
      const size_t space = rest.find(' ');
      auto& map = line[2] == 'H' ? out.help : out.type;
      map[rest.substr(0, space)] = space == std::string::npos ? "" : rest.substr(space + 1);
      continue;
    }
    if (line[0] == '#') {
      continue;
    }
    Sample s;
    s.line = line;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') {
      ++i;
    }
    s.name = line.substr(0, i);
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const size_t eq = line.find('=', i);
        std::string name = line.substr(i, eq - i);
        std::string value;
        i = eq + 2;  // past ="
        while (i < line.size() && line[i] != '"') {
          if (line[i] == '\\' && i + 1 < line.size()) {
            ++i;
          }
          value += line[i++];
        }
        ++i;  // closing quote
        if (i < line.size() && line[i] == ',') {
          ++i;
        }
        s.labels.emplace_back(std::move(name), std::move(value));
      }
      ++i;  // '}'
    }
    s.value = line.substr(line.find_first_not_of(' ', i));
    out.samples.push_back(std::move(s));
  }
  return out;
}

// The family a sample belongs to (histogram series carry _bucket/_sum/_count).
inline std::string familyOf(const Sample& s, const Exposition& e) {
  if (e.type.count(s.name) != 0) {
    return s.name;
  }
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    const std::string sfx = suffix;
    if (s.name.size() > sfx.size() &&
        s.name.compare(s.name.size() - sfx.size(), sfx.size(), sfx) == 0) {
      return s.name.substr(0, s.name.size() - sfx.size());
    }
  }
  return s.name;
}

// The sample lines whose metric name starts with `prefix`, in order.
inline std::vector<std::string> sampleLines(const std::string& text, const std::string& prefix) {
  std::vector<std::string> lines;
  for (const Sample& s : parseExposition(text).samples) {
    if (s.name.rfind(prefix, 0) == 0) {
      lines.push_back(s.line);
    }
  }
  return lines;
}

}  // namespace grelay::metrics::testing
