#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// One e-mail: plain text, or text and HTML as multipart/alternative.
struct MailMessage: Sendable, Equatable {
    var from: String
    var to: [String]
    var subject: String
    var text: String
    var html: String?
    /// Unix epoch milliseconds for the Date header.
    var dateUnixMs: Int64
    /// Without angle brackets; unique per message.
    var messageID: String

    init(from: String, to: [String], subject: String, text: String, html: String? = nil, dateUnixMs: Int64, messageID: String) {
        self.from = from
        self.to = to
        self.subject = subject
        self.text = text
        self.html = html
        self.dateUnixMs = dateUnixMs
        self.messageID = messageID
    }

    /// The message in RFC 5322 form with CRLF line ends, bodies base64-encoded (so no line
    /// is too long for SMTP and any text survives). Not yet dot-stuffed.
    func rendered() -> String {
        var headers = [
            "From: \(from)",
            "To: \(to.joined(separator: ", "))",
            "Subject: \(Self.encodedHeaderWord(subject))",
            "Date: \(Self.rfc5322Date(dateUnixMs))",
            "Message-ID: <\(messageID)>",
            "MIME-Version: 1.0",
            "Auto-Submitted: auto-generated",
        ]
        var body: [String]
        if let html {
            let boundary = "bynar-" + messageID.filter { $0.isLetter || $0.isNumber }
            headers.append("Content-Type: multipart/alternative; boundary=\"\(boundary)\"")
            body = ["This is a multipart message in MIME format.", ""]
            for (type, content) in [("text/plain", text), ("text/html", html)] {
                body += ["--\(boundary)", "Content-Type: \(type); charset=utf-8", "Content-Transfer-Encoding: base64", ""]
                body += Self.base64Lines(content)
            }
            body.append("--\(boundary)--")
        } else {
            headers += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64"]
            body = Self.base64Lines(text)
        }
        return (headers + [""] + body).joined(separator: "\r\n") + "\r\n"
    }

    /// `text` ready for the DATA command: CRLF line ends, every line that starts with a dot
    /// given a second one (RFC 5321 4.5.2), and the closing `.` line.
    static func dotStuffed(_ text: String) -> String {
        let normalized = text.replacing("\r\n", with: "\n").replacing("\r", with: "\n")
        var lines = normalized.split(separator: "\n", omittingEmptySubsequences: false).map { line in
            line.hasPrefix(".") ? "." + line : String(line)
        }
        if lines.last == "" { lines.removeLast() }
        return lines.joined(separator: "\r\n") + "\r\n.\r\n"
    }

    static func base64Lines(_ text: String) -> [String] {
        let encoded = Data(text.utf8).base64EncodedString()
        var lines: [String] = []
        var index = encoded.startIndex
        while index < encoded.endIndex {
            let end = encoded.index(index, offsetBy: 76, limitedBy: encoded.endIndex) ?? encoded.endIndex
            lines.append(String(encoded[index..<end]))
            index = end
        }
        return lines
    }

    /// ASCII text as it is; anything else as an RFC 2047 encoded word.
    static func encodedHeaderWord(_ text: String) -> String {
        let clean = text.replacing("\r", with: " ").replacing("\n", with: " ")
        if clean.utf8.allSatisfy({ $0 >= 32 && $0 < 127 }) { return clean }
        return "=?UTF-8?B?\(Data(clean.utf8).base64EncodedString())?="
    }

    /// `Tue, 03 Jun 2025 07:00:00 +0000`.
    static func rfc5322Date(_ unixMs: Int64) -> String {
        var seconds = time_t(unixMs / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(days[Int(parts.tm_wday)]), \(two(parts.tm_mday)) \(months[Int(parts.tm_mon)]) \(parts.tm_year + 1900) \(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) +0000"
    }
}
