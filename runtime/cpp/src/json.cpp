#include "json.hpp"

#include <charconv>
#include <cmath>

#include "sdrt/host.hpp"

namespace sdrt::json {

namespace {

const char* kind_name(Value::Kind kind) {
  switch (kind) {
    case Value::Kind::null: return "null";
    case Value::Kind::boolean: return "a boolean";
    case Value::Kind::number: return "a number";
    case Value::Kind::string: return "a string";
    case Value::Kind::array: return "an array";
    case Value::Kind::object: return "an object";
  }
  return "?";
}

[[noreturn]] void wrong_type(const std::string& what, const char* wanted, Value::Kind got) {
  throw Error(what + " should be " + wanted + ", not " + kind_name(got) + ".");
}

void append_utf8(std::string& out, unsigned code) {
  if (code < 0x80) {
    out += static_cast<char>(code);
  } else if (code < 0x800) {
    out += static_cast<char>(0xC0 | (code >> 6));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else if (code < 0x10000) {
    out += static_cast<char>(0xE0 | (code >> 12));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code >> 18));
    out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code & 0x3F));
  }
}

}  // namespace

class Parser {
 public:
  Parser(const std::string& text, const std::string& source) : text_(text), source_(source) {}

  Value document() {
    Value value = parse_value(0);
    skip_space();
    if (pos_ != text_.size()) fail("unexpected text after the JSON value");
    return value;
  }

 private:
  static constexpr int kMaxDepth = 256;
  const std::string& text_;
  const std::string& source_;
  std::size_t pos_ = 0;

  [[noreturn]] void fail(const std::string& why) const {
    throw Error(source_ + " is not valid JSON (" + why + " at byte " + std::to_string(pos_) + ").");
  }

  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' || text_[pos_] == '\r' ||
                                   text_[pos_] == '\t')) {
      ++pos_;
    }
  }

  bool consume(const char* word) {
    std::size_t n = std::char_traits<char>::length(word);
    if (text_.compare(pos_, n, word) != 0) return false;
    pos_ += n;
    return true;
  }

  Value parse_value(int depth) {
    if (depth > kMaxDepth) fail("nesting too deep");
    skip_space();
    if (pos_ >= text_.size()) fail("unexpected end");
    Value value;
    char c = text_[pos_];
    if (c == '{') {
      value.kind_ = Value::Kind::object;
      ++pos_;
      skip_space();
      if (pos_ < text_.size() && text_[pos_] == '}') { ++pos_; return value; }
      while (true) {
        skip_space();
        if (pos_ >= text_.size() || text_[pos_] != '"') fail("expected a member name");
        std::string key = parse_string();
        skip_space();
        if (pos_ >= text_.size() || text_[pos_] != ':') fail("expected ':'");
        ++pos_;
        value.object_[key] = parse_value(depth + 1);
        skip_space();
        if (pos_ < text_.size() && text_[pos_] == ',') { ++pos_; continue; }
        if (pos_ < text_.size() && text_[pos_] == '}') { ++pos_; return value; }
        fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      value.kind_ = Value::Kind::array;
      ++pos_;
      skip_space();
      if (pos_ < text_.size() && text_[pos_] == ']') { ++pos_; return value; }
      while (true) {
        value.array_.push_back(parse_value(depth + 1));
        skip_space();
        if (pos_ < text_.size() && text_[pos_] == ',') { ++pos_; continue; }
        if (pos_ < text_.size() && text_[pos_] == ']') { ++pos_; return value; }
        fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      value.kind_ = Value::Kind::string;
      value.string_ = parse_string();
      return value;
    }
    if (consume("true")) { value.kind_ = Value::Kind::boolean; value.boolean_ = true; return value; }
    if (consume("false")) { value.kind_ = Value::Kind::boolean; return value; }
    if (consume("null")) return value;
    if (c == '-' || (c >= '0' && c <= '9')) {
      // Python's json writes NaN/Infinity only for non-finite floats, which no manifest holds.
      const char* begin = text_.data() + pos_;
      const char* end = text_.data() + text_.size();
      auto [next, error] = std::from_chars(begin, end, value.number_);
      if (error != std::errc()) fail("bad number");
      pos_ += static_cast<std::size_t>(next - begin);
      value.kind_ = Value::Kind::number;
      return value;
    }
    fail(std::string("unexpected character '") + c + "'");
  }

  unsigned hex4() {
    if (pos_ + 4 > text_.size()) fail("short \\u escape");
    unsigned code = 0;
    for (int i = 0; i < 4; ++i) {
      char h = text_[pos_++];
      code <<= 4;
      if (h >= '0' && h <= '9') code |= static_cast<unsigned>(h - '0');
      else if (h >= 'a' && h <= 'f') code |= static_cast<unsigned>(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') code |= static_cast<unsigned>(h - 'A' + 10);
      else fail("bad \\u escape");
    }
    return code;
  }

  std::string parse_string() {
    ++pos_;  // the opening quote
    std::string out;
    while (true) {
      if (pos_ >= text_.size()) fail("unterminated string");
      char c = text_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') { out += c; continue; }
      if (pos_ >= text_.size()) fail("unterminated escape");
      char e = text_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned code = hex4();
          if (code >= 0xD800 && code < 0xDC00) {  // a surrogate pair
            if (!consume("\\u")) fail("lone surrogate");
            unsigned low = hex4();
            if (low < 0xDC00 || low >= 0xE000) fail("bad surrogate pair");
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, code);
          break;
        }
        default: fail("bad escape");
      }
    }
  }
};

Value Value::parse(const std::string& text, const std::string& source) { return Parser(text, source).document(); }

double Value::number(const std::string& what) const {
  if (kind_ != Kind::number) wrong_type(what, "a number", kind_);
  return number_;
}

long long Value::integer(const std::string& what) const {
  double value = number(what);
  if (value != std::floor(value) || std::fabs(value) > 9.0e15) throw Error(what + " should be an integer.");
  return static_cast<long long>(value);
}

const std::string& Value::string(const std::string& what) const {
  if (kind_ != Kind::string) wrong_type(what, "a string", kind_);
  return string_;
}

const std::vector<Value>& Value::array(const std::string& what) const {
  if (kind_ != Kind::array) wrong_type(what, "an array", kind_);
  return array_;
}

const std::map<std::string, Value>& Value::object(const std::string& what) const {
  if (kind_ != Kind::object) wrong_type(what, "an object", kind_);
  return object_;
}

bool Value::boolean(const std::string& what) const {
  if (kind_ != Kind::boolean) wrong_type(what, "true or false", kind_);
  return boolean_;
}

const Value* Value::find(const std::string& key) const {
  if (kind_ != Kind::object) return nullptr;
  auto it = object_.find(key);
  return it == object_.end() ? nullptr : &it->second;
}

const Value& Value::at(const std::string& key, const std::string& what) const {
  const Value* value = find(key);
  if (value == nullptr) throw Error(what + " has no \"" + key + "\".");
  return *value;
}

}  // namespace sdrt::json
