// Issuer keys and key files (see issuer_keys.h).
#include "issuer_keys.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iterator>
#include <utility>

#include <fmt/format.h>

#include "sodium_init.h"

namespace jitlb {

static_assert(kIssuerPublicKeySize == crypto_sign_PUBLICKEYBYTES);
static_assert(kIssuerSeedSize == crypto_sign_SEEDBYTES);
static_assert(sizeof(GrantSignature) == crypto_sign_BYTES);

namespace {

// 32 bytes in base64url without padding.
constexpr size_t kKeyBase64Chars = 43;

KeyFileError fail(KeyFileErrc code, std::string message) {
    return KeyFileError{code, std::move(message)};
}

std::string errno_text(int err) {
    return std::strerror(err);
}

// Appends base64url without padding. Reserves first, so that appending a
// secret never leaves a copy behind in a buffer given back by a reallocation.
void append_base64url(std::string& out, std::span<const uint8_t> bytes) {
    const size_t size =
        sodium_base64_ENCODED_LEN(bytes.size(), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    const size_t start = out.size();
    out.reserve(start + size);
    out.resize(start + size);
    sodium_bin2base64(out.data() + start, size, bytes.data(), bytes.size(),
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    out.resize(start + size - 1);  // the encoder's NUL
}

bool is_base64url_char(char c) noexcept {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

// Exactly `out.size()` bytes from canonical base64url without padding.
bool from_base64url(std::string_view text, std::span<uint8_t> out) noexcept {
    for (const char c : text) {
        if (!is_base64url_char(c)) return false;
    }
    size_t written = 0;
    const int rc = sodium_base642bin(out.data(), out.size(), text.data(), text.size(), nullptr,
                                     &written, nullptr, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return rc == 0 && written == out.size();
}

bool is_blank(char c) noexcept {
    return c == ' ' || c == '\t';
}

std::string_view trim(std::string_view s) noexcept {
    while (!s.empty() && is_blank(s.front())) s.remove_prefix(1);
    while (!s.empty() && is_blank(s.back())) s.remove_suffix(1);
    return s;
}

// Splits off the first field (up to a blank) and the blanks after it.
std::string_view next_field(std::string_view& s) noexcept {
    size_t end = 0;
    while (end < s.size() && !is_blank(s[end])) ++end;
    const std::string_view field = s.substr(0, end);
    s.remove_prefix(end);
    while (!s.empty() && is_blank(s.front())) s.remove_prefix(1);
    return field;
}

// A control character (other than tab) in a line, or npos.
size_t find_control(std::string_view s) noexcept {
    for (size_t i = 0; i < s.size(); ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if ((c < 0x20 && c != '\t') || c == 0x7f) return i;
    }
    return std::string_view::npos;
}

// Shows a field from a file in a message without letting it run on.
std::string quoted(std::string_view s) {
    constexpr size_t kShown = 60;
    std::string out;
    for (const char c : s.substr(0, kShown)) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) {
            out += fmt::format("\\x{:02x}", u);
        } else {
            out += c;
        }
    }
    if (s.size() > kShown) out += "...";
    return "'" + out + "'";
}

// A file descriptor closed on every path out.
class Fd {
  public:
    explicit Fd(int fd) noexcept : fd_(fd) {}
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() {
        if (fd_ >= 0) ::close(fd_);
    }
    int get() const noexcept { return fd_; }
    int release() noexcept { return std::exchange(fd_, -1); }

  private:
    int fd_;
};

enum class FileKind { secret, public_keys };

// Reads a whole key file after checking what it is. O_NONBLOCK keeps a FIFO
// planted at the path from blocking the open; fstat then refuses it.
KeyFileError read_key_file(const std::string& path, FileKind kind, std::string& text) {
    const char* what =
        kind == FileKind::secret ? "issuer secret key file" : "issuer public key file";
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    if (fd.get() < 0) {
        const int err = errno;
        return fail(KeyFileErrc::io,
                    fmt::format("{}: cannot open {}: {}", path, what, errno_text(err)));
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) {
        const int err = errno;
        return fail(KeyFileErrc::io,
                    fmt::format("{}: cannot stat {}: {}", path, what, errno_text(err)));
    }
    if (!S_ISREG(st.st_mode)) {
        return fail(KeyFileErrc::not_regular,
                    fmt::format("{}: the {} is not a regular file (mode {:o})", path, what,
                                st.st_mode & S_IFMT));
    }
    const unsigned perms = st.st_mode & 07777;
    if (kind == FileKind::secret && (perms & 077) != 0) {
        return fail(KeyFileErrc::insecure_permissions,
                    fmt::format("{}: the {} has mode {:04o}, so others may read it; it must be "
                                "readable by its owner only (run: chmod 600 {})",
                                path, what, perms, path));
    }
    if (kind == FileKind::public_keys && (perms & 022) != 0) {
        return fail(KeyFileErrc::insecure_permissions,
                    fmt::format("{}: the {} has mode {:04o}, so others may write it and trust "
                                "any key; it must be writable by its owner only (run: chmod "
                                "go-w {})",
                                path, what, perms, path));
    }
    const size_t limit = kind == FileKind::secret ? kMaxSecretKeyFileBytes : kMaxPublicKeyFileBytes;
    if (static_cast<uint64_t>(st.st_size) > limit) {
        return fail(KeyFileErrc::too_large, fmt::format("{}: the {} is {} bytes; at most {} are "
                                                        "read (is this the right file?)",
                                                        path, what, st.st_size, limit));
    }
    // Read to end of file rather than trusting st_size, up to one byte over the limit.
    text.assign(limit + 1, '\0');
    size_t got = 0;
    while (got < text.size()) {
        const ssize_t n = ::read(fd.get(), text.data() + got, text.size() - got);
        if (n < 0) {
            const int err = errno;
            if (err == EINTR) continue;
            sodium_memzero(text.data(), text.size());
            return fail(KeyFileErrc::io,
                        fmt::format("{}: cannot read {}: {}", path, what, errno_text(err)));
        }
        if (n == 0) break;
        got += static_cast<size_t>(n);
    }
    if (got > limit) {
        sodium_memzero(text.data(), text.size());
        return fail(
            KeyFileErrc::too_large,
            fmt::format("{}: the {} grew beyond {} bytes while it was read", path, what, limit));
    }
    // Shrinking keeps the capacity: the bytes beyond `got` are zeros already.
    text.resize(got);
    return {};
}

// Creates a new file (never overwrites, never follows a symlink) holding `text`.
KeyFileError create_key_file(const std::string& path, std::string_view text, mode_t mode,
                             const char* what) {
    Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
    if (fd.get() < 0) {
        const int err = errno;
        if (err == EEXIST) {
            return fail(KeyFileErrc::exists,
                        fmt::format("{}: cannot create {}: the path exists (it is never "
                                    "overwritten; remove it or choose another path)",
                                    path, what));
        }
        return fail(KeyFileErrc::io,
                    fmt::format("{}: cannot create {}: {}", path, what, errno_text(err)));
    }
    // The umask may have removed bits; it cannot have added any.
    auto remove_with = [&](int err, const char* step) {
        ::close(fd.release());
        ::unlink(path.c_str());
        return fail(KeyFileErrc::io, fmt::format("{}: cannot {} {}: {} (the file was removed)",
                                                 path, step, what, errno_text(err)));
    };
    if (::fchmod(fd.get(), mode) != 0) return remove_with(errno, "set the mode of");
    size_t done = 0;
    while (done < text.size()) {
        const ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            return remove_with(errno, "write");
        }
        done += static_cast<size_t>(n);
    }
    if (::fsync(fd.get()) != 0) return remove_with(errno, "sync");
    if (::close(fd.release()) != 0) {
        const int err = errno;
        ::unlink(path.c_str());
        return fail(KeyFileErrc::io, fmt::format("{}: cannot close {}: {} (the file was removed)",
                                                 path, what, errno_text(err)));
    }
    return {};
}

bool valid_comment(std::string_view comment) noexcept {
    return comment.size() <= kMaxKeyCommentBytes &&
           find_control(comment) == std::string_view::npos &&
           comment.find('\t') == std::string_view::npos && trim(comment) == comment;
}

}  // namespace

// --- keys ---------------------------------------------------------------------------

IssuerKeyId issuer_key_id(const IssuerPublicKey& key) noexcept {
    std::array<uint8_t, crypto_generichash_BYTES> digest{};
    crypto_generichash_state state;
    crypto_generichash_init(&state, nullptr, 0, digest.size());
    crypto_generichash_update(&state, reinterpret_cast<const uint8_t*>(kIssuerKeyIdDomain.data()),
                              kIssuerKeyIdDomain.size());
    crypto_generichash_update(&state, key.bytes.data(), key.bytes.size());
    crypto_generichash_final(&state, digest.data(), digest.size());
    IssuerKeyId id{};
    std::memcpy(id.data(), digest.data(), id.size());
    return id;
}

std::string key_id_hex(const IssuerKeyId& id) {
    std::string hex;
    for (const uint8_t b : id) hex += fmt::format("{:02x}", b);
    return hex;
}

std::string public_key_base64(const IssuerPublicKey& key) {
    std::string text;
    append_base64url(text, key.bytes);
    return text;
}

IssuerSecretKey IssuerSecretKey::generate() {
    ensure_sodium();
    IssuerSecretKey key;
    crypto_sign_keypair(key.public_.bytes.data(), key.secret_.data());
    key.key_id_ = issuer_key_id(key.public_);
    return key;
}

IssuerSecretKey IssuerSecretKey::from_seed(std::span<const uint8_t, kIssuerSeedSize> seed) {
    ensure_sodium();
    IssuerSecretKey key;
    crypto_sign_seed_keypair(key.public_.bytes.data(), key.secret_.data(), seed.data());
    key.key_id_ = issuer_key_id(key.public_);
    return key;
}

IssuerSecretKey::IssuerSecretKey(IssuerSecretKey&& other) noexcept
    : secret_(other.secret_), public_(other.public_), key_id_(other.key_id_) {
    other.wipe();
}

IssuerSecretKey& IssuerSecretKey::operator=(IssuerSecretKey&& other) noexcept {
    if (this != &other) {
        secret_ = other.secret_;
        public_ = other.public_;
        key_id_ = other.key_id_;
        other.wipe();
    }
    return *this;
}

IssuerSecretKey::~IssuerSecretKey() {
    wipe();
}

void IssuerSecretKey::wipe() noexcept {
    sodium_memzero(secret_.data(), secret_.size());
}

GrantSignature IssuerSecretKey::sign(std::span<const uint8_t> message) const noexcept {
    GrantSignature signature{};
    crypto_sign_detached(signature.data(), nullptr, message.data(), message.size(), secret_.data());
    return signature;
}

// --- errors ---------------------------------------------------------------------------

std::string_view key_file_errc_name(KeyFileErrc code) noexcept {
    constexpr std::string_view kNames[] = {
        "ok",        "io",     "exists",  "not_regular",   "insecure_permissions",
        "too_large", "syntax", "bad_key", "duplicate_key", "key_id_collision",
    };
    static_assert(std::size(kNames) == static_cast<size_t>(KeyFileErrc::key_id_collision) + 1);
    const auto i = static_cast<size_t>(code);
    return i < std::size(kNames) ? kNames[i] : "unknown";
}

// --- the trusted set ---------------------------------------------------------------------

KeyFileError TrustedIssuers::add(const IssuerPublicKey& key, std::string comment, uint32_t line) {
    const IssuerKeyId id = issuer_key_id(key);
    if (const auto it = by_id_.find(id); it != by_id_.end()) {
        const TrustedIssuer& held = entries_[it->second];
        if (held.key == key) {
            return fail(KeyFileErrc::duplicate_key,
                        fmt::format("key {} appears twice (first on line {}): remove one line",
                                    key_id_hex(id), held.line));
        }
        return fail(KeyFileErrc::key_id_collision,
                    fmt::format("key {} has the same key id as a different key (line {}): grants "
                                "could not say which one signed them; generate a new key",
                                key_id_hex(id), held.line));
    }
    by_id_.emplace(id, entries_.size());
    entries_.push_back(TrustedIssuer{key, id, std::move(comment), line});
    return {};
}

const TrustedIssuer* TrustedIssuers::find(const IssuerKeyId& id) const noexcept {
    const auto it = by_id_.find(id);
    return it == by_id_.end() ? nullptr : &entries_[it->second];
}

// --- public key files ----------------------------------------------------------------------

KeyFileError parse_public_keys(std::string_view text, std::string_view source,
                               TrustedIssuers& out) {
    ensure_sodium();
    TrustedIssuers issuers;
    uint32_t line_no = 0;
    while (!text.empty()) {
        ++line_no;
        const size_t eol = text.find('\n');
        std::string_view line = text.substr(0, eol);
        text.remove_prefix(eol == std::string_view::npos ? text.size() : eol + 1);
        const auto at = [&](KeyFileErrc code, std::string what) {
            return fail(code, fmt::format("{}:{}: {}", source, line_no, what));
        };

        if (const size_t bad = find_control(line); bad != std::string_view::npos) {
            return at(
                KeyFileErrc::syntax,
                fmt::format(
                    "control character 0x{:02x} at column {}{}",
                    static_cast<unsigned char>(line[bad]), bad + 1,
                    line[bad] == '\r' ? " (a DOS line ending: run dos2unix on the file)" : ""));
        }
        line = trim(line);
        if (line.empty() || line.front() == '#') continue;

        const std::string_view tag = next_field(line);
        const std::string_view encoded = next_field(line);
        const std::string_view comment = line;  // trimmed already; may hold blanks inside
        if (tag == kIssuerSecretTag) {
            return at(KeyFileErrc::syntax,
                      "this line holds a SECRET key; a public key file lists public keys only "
                      "(remove the line, and treat the key as exposed)");
        }
        if (tag != kIssuerPublicTag) {
            return at(KeyFileErrc::syntax, fmt::format("expected '{} <key> [comment]', found {}",
                                                       kIssuerPublicTag, quoted(tag)));
        }
        if (encoded.empty()) {
            return at(KeyFileErrc::syntax, fmt::format("'{}' without a key", kIssuerPublicTag));
        }
        IssuerPublicKey key;
        if (encoded.size() != kKeyBase64Chars || !from_base64url(encoded, key.bytes)) {
            return at(KeyFileErrc::bad_key,
                      fmt::format("key {} is not {} characters of base64url (a 32-byte key, "
                                  "no padding)",
                                  quoted(encoded), kKeyBase64Chars));
        }
        if (crypto_core_ed25519_is_valid_point(key.bytes.data()) != 1) {
            return at(KeyFileErrc::bad_key,
                      fmt::format("key {} is not a valid Ed25519 public key", quoted(encoded)));
        }
        if (comment.size() > kMaxKeyCommentBytes) {
            return at(KeyFileErrc::syntax, fmt::format("comment of {} bytes; at most {}",
                                                       comment.size(), kMaxKeyCommentBytes));
        }
        KeyFileError added = issuers.add(key, std::string(comment), line_no);
        if (!added.ok()) return at(added.code, std::move(added.message));
    }
    out = std::move(issuers);
    return {};
}

KeyFileError read_public_key_file(const std::string& path, TrustedIssuers& out) {
    std::string text;
    KeyFileError error = read_key_file(path, FileKind::public_keys, text);
    if (!error.ok()) return error;
    return parse_public_keys(text, path, out);
}

std::string public_key_line(const IssuerPublicKey& key, std::string_view comment) {
    if (comment.empty()) return fmt::format("{} {}\n", kIssuerPublicTag, public_key_base64(key));
    return fmt::format("{} {} {}\n", kIssuerPublicTag, public_key_base64(key), comment);
}

KeyFileError write_public_key_file(const std::string& path, const IssuerPublicKey& key,
                                   std::string_view comment) {
    if (!valid_comment(comment)) {
        return fail(KeyFileErrc::syntax,
                    fmt::format("{}: comment {} must be at most {} bytes without control "
                                "characters, tabs or blanks at either end",
                                path, quoted(comment), kMaxKeyCommentBytes));
    }
    return create_key_file(path, public_key_line(key, comment), 0644, "issuer public key file");
}

// --- secret key files --------------------------------------------------------------------

KeyFileError parse_secret_key(std::string_view text, std::string_view source,
                              std::optional<IssuerSecretKey>& out) {
    ensure_sodium();
    if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
    const size_t expected = kIssuerSecretTag.size() + 1 + kKeyBase64Chars;
    if (text.substr(0, kIssuerSecretTag.size()) == kIssuerPublicTag) {
        return fail(KeyFileErrc::syntax,
                    fmt::format("{}: this is a public key file; an issuer secret key file "
                                "starts with '{}'",
                                source, kIssuerSecretTag));
    }
    if (text.size() != expected || text.substr(0, kIssuerSecretTag.size()) != kIssuerSecretTag ||
        text[kIssuerSecretTag.size()] != ' ') {
        // The content is secret: describe it without showing it.
        return fail(KeyFileErrc::syntax,
                    fmt::format("{}: an issuer secret key file is one line, '{} <{} characters "
                                "of base64url>', optionally ending in a newline ({} bytes "
                                "found)",
                                source, kIssuerSecretTag, kKeyBase64Chars, text.size()));
    }
    std::array<uint8_t, kIssuerSeedSize> seed{};
    if (!from_base64url(text.substr(kIssuerSecretTag.size() + 1), seed)) {
        sodium_memzero(seed.data(), seed.size());
        return fail(KeyFileErrc::bad_key,
                    fmt::format("{}: the key is not canonical base64url of a {}-byte seed", source,
                                kIssuerSeedSize));
    }
    out.emplace(IssuerSecretKey::from_seed(seed));
    sodium_memzero(seed.data(), seed.size());
    return {};
}

KeyFileError read_secret_key_file(const std::string& path, std::optional<IssuerSecretKey>& out) {
    std::string text;
    KeyFileError error = read_key_file(path, FileKind::secret, text);
    if (error.ok()) error = parse_secret_key(text, path, out);
    sodium_memzero(text.data(), text.size());
    return error;
}

KeyFileError write_secret_key_file(const std::string& path, const IssuerSecretKey& key) {
    std::string text;
    text.reserve(kIssuerSecretTag.size() + kKeyBase64Chars + 3);
    text.append(kIssuerSecretTag);
    text.push_back(' ');
    append_base64url(text, std::span(key.secret_).first<kIssuerSeedSize>());
    text.push_back('\n');
    KeyFileError error = create_key_file(path, text, 0600, "issuer secret key file");
    sodium_memzero(text.data(), text.size());
    return error;
}

}  // namespace jitlb
