---@meta postern
-- postern's rule API (docs/lua-api.md) as Lua Language Server annotations:
-- completion and type hints for rule authors in any LSP editor. Nothing here
-- runs; postern provides these functions itself. Point the editor at this
-- directory, e.g. in .luarc.json next to your rules:
--   { "workspace.library": ["/usr/share/postern/scripts/types"],
--     "runtime.version": "Lua 5.4" }
-- tests/e2e/test_lua_annotations.py checks that every function the C++ API
-- registers (filters/lua/*.cpp) is annotated here.

---@alias postern.Stage "connect"|"helo"|"mail"|"rcpt"|"data"|"eom"|"close"
---@alias postern.AuthResult "pass"|"fail"|"softfail"|"neutral"|"none"|"temperror"|"permerror"|"policy"
---@alias postern.DnsStatus "nxdomain"|"nodata"|"servfail"|"timeout"

---A verdict value: return it from a rule's fn.
---@class postern.Verdict
---@field action string
---@field code integer|nil
---@field enhanced string|nil
---@field text string|nil
---@field reason string|nil

---The table postern.rule{} takes.
---@class postern.RuleSpec
---@field name string 1-64 letters, digits, _ - .; unique across scripts; the default symbol name
---@field stage postern.Stage|postern.Stage[]
---@field fn fun(ctx: postern.Ctx): (postern.Verdict|boolean|nil)
---@field score? number default score of ctx:symbol() and of returning true (0)
---@field description? string shown with the symbol
---@field on_error? "tempfail"|"continue" what an error or exceeded limit means (default [lua] on_error)

---An address: tostring(a) is addr; a == b compares with the domain case-insensitive.
---@class postern.Address
---@field local_part string
---@field domain string
---@field addr string "" for the null reverse-path <>

---@class postern.Tls
---@field active boolean
---@field version string
---@field cipher string
---@field subject string subject of a client certificate
---@field fingerprint string

---A read-only view of the client; pairs() lists every field.
---@class postern.Client
---@field ip string client address (from the PROXY header when one is used)
---@field port integer
---@field name string verified reverse DNS name, "" when none
---@field helo string HELO/EHLO argument (helo on)
---@field esmtp boolean true after EHLO
---@field auth_user string authenticated user, "" when none
---@field tls postern.Tls a fresh table on every read
---@field listener string
---@field session_id string

---A read-only view of the envelope; pairs() lists every field.
---@class postern.Envelope
---@field from postern.Address reverse-path (mail-eom)
---@field rcpts postern.Address[] accepted forward-paths so far (a fresh table on every read)
---@field rcpt postern.Address the recipient being decided (rcpt)
---@field id string transaction id

---@class postern.Symbol
---@field name string
---@field score number
---@field description string

---@class postern.Auth
---@field spf postern.AuthResult|nil
---@field dkim postern.AuthResult|nil
---@field dmarc postern.AuthResult|nil

---@class postern.SpfResult
---@field result string
---@field identity "mailfrom"|"helo"
---@field sender string
---@field domain string
---@field client_ip string
---@field helo string
---@field explanation string
---@field reason string

---@class postern.DkimSignature
---@field result string
---@field domain string
---@field selector string
---@field algorithm string
---@field identity string
---@field b string
---@field reason string
---@field key_bits integer
---@field weak_key boolean
---@field body_length integer|nil nil without l=
---@field body_truncated boolean

---@class postern.DmarcResult
---@field result string
---@field from_domain string
---@field org_domain string
---@field policy string
---@field disposition string
---@field spf_aligned boolean
---@field dkim_aligned boolean
---@field record_domain string
---@field reason string

---@class postern.ArcSet
---@field instance integer i=
---@field sealer string ARC-Seal d=
---@field selector string ARC-Seal s=
---@field ams_domain string ARC-Message-Signature d=
---@field cv string none, pass or fail
---@field ams_valid boolean
---@field as_valid boolean

---@class postern.ArcResult
---@field result string pass, fail or none
---@field count integer ARC sets
---@field oldest_pass integer lowest instance from which every AMS verifies; 0 when all do
---@field reason string why fail
---@field trusted_sealer string the [arc] trusted_sealers domain whose results overrode DMARC, or ""
---@field sealers string[] ARC-Seal d= by instance
---@field sets postern.ArcSet[]

---The header section (data, eom). Names are case-insensitive.
---@class postern.Headers
local Headers = {}

---The first field's value, unfolded, encoded-words decoded; nil if absent.
---@param name string
---@return string|nil
function Headers:first(name) end

---Every value of fields with that name.
---@param name string
---@return string[]
function Headers:all(name) end

---The whole fields as received ("Subject: =?utf-8?...\r\n"), undecoded.
---@param name string
---@return string[]
function Headers:raw(name) end

---The number of fields with that name.
---@param name string
---@return integer
function Headers:count(name) end

---Every field name in order.
---@return string[]
function Headers:names() end

---@class postern.TextPart
---@field type string
---@field charset string
---@field filename string
---@field text string decoded to UTF-8, cut at text_part_limit

---@class postern.Attachment
---@field filename string
---@field names string[] every name the part goes by: filename, then the others readers may show
---@field archive string? for a file in an archive (ZIP, RAR, 7z, cabinet, tar) or compressed file: the archive's file name (the inner one's for a file in an archive inside an archive)
---@field unopened boolean? true for a file in an archive that is itself an archive postern did not open (encrypted, another compression method, or inside a RAR, 7z or cabinet archive)
---@field type string
---@field disposition string
---@field encoded_size integer

---The body (eom only).
---@class postern.Body
local Body = {}

---Body octets.
---@return integer
function Body:size() end

---text/* parts that are not attachments, at most text_parts_max, and
---whether they are every text part of the message, each whole.
---@return postern.TextPart[] parts
---@return boolean complete
function Body:text_parts() end

---Parts with a file name or Content-Disposition: attachment, in the whole message,
---and files uuencoded or yEnc-encoded in text/plain or held in a TNEF winmail.dat, an archive (ZIP, RAR, 7z, cabinet, tar) or a compressed file.
---@return postern.Attachment[]
function Body:attachments() end

---Iterator over the raw body lines (without CRLF), up to body_scan_limit.
---@return fun(): string|nil
function Body:lines() end

---What a rule's fn is given; valid only during that call.
---@class postern.Ctx
---@field stage postern.Stage
---@field rule string the running rule's name
---@field client postern.Client
---@field envelope postern.Envelope
---@field headers postern.Headers|nil data, eom
---@field body postern.Body|nil eom
---@field notes table<string, string> transaction notes (spf.*, dkim.*, dmarc.* read-only)
---@field session_notes table<string, string> connection notes
---@field score number the transaction's score so far
---@field symbols postern.Symbol[]
---@field auth postern.Auth
---@field spf postern.SpfResult|nil
---@field dkim postern.DkimSignature[]|nil
---@field dmarc postern.DmarcResult|nil
---@field arc postern.ArcResult|nil
local Ctx = {}

---Adds a named hit to the transaction (once per name).
---@param name? string default: the rule's name
---@param score? number default: the rule's score
---@param description? string
function Ctx:symbol(name, score, description) end

---Whether a symbol was added so far.
---@param name string
---@return boolean
function Ctx:has_symbol(name) end

---Appends a field at the end of the header.
---@param name string
---@param value string
function Ctx:add_header(name, value) end

---Inserts a field at the top (below postern's Received).
---@param name string
---@param value string
function Ctx:prepend_header(name, value) end

---Replaces the index-th field of that name (default 1; 0 = every one).
---@param name string
---@param value string
---@param index? integer
function Ctx:change_header(name, value, index) end

---Removes the index-th field (default 0 = every one).
---@param name string
---@param index? integer
function Ctx:remove_header(name, index) end

---Prefixes the Subject with tag (once; creates a Subject when absent).
---@param tag string
function Ctx:tag_subject(tag) end

---Adds a recipient (bcc).
---@param addr string
function Ctx:add_rcpt(addr) end

---Removes a recipient.
---@param addr string
function Ctx:remove_rcpt(addr) end

---Changes the reverse-path; "" = <>.
---@param addr string
function Ctx:set_sender(addr) end

---Replaces every recipient.
---@param addr string|string[]
function Ctx:redirect(addr) end

---@class postern.Dns
local Dns = {}

---A records. nil and a status on failure.
---@param name string
---@return string[]|nil records
---@return postern.DnsStatus|nil status
function Dns.a(name) end

---AAAA records.
---@param name string
---@return string[]|nil records
---@return postern.DnsStatus|nil status
function Dns.aaaa(name) end

---MX records as "preference host".
---@param name string
---@return string[]|nil records
---@return postern.DnsStatus|nil status
function Dns.mx(name) end

---TXT records, one string per record.
---@param name string
---@return string[]|nil records
---@return postern.DnsStatus|nil status
function Dns.txt(name) end

---PTR host names; an IP address is reversed for you.
---@param ip_or_name string
---@return string[]|nil records
---@return postern.DnsStatus|nil status
function Dns.ptr(ip_or_name) end

---The listed codes ({"127.0.0.2"}), {} when not listed; IPv4 and IPv6.
---@param zone string
---@param ip string
---@return string[]|nil codes
---@return postern.DnsStatus|nil status
function Dns.dnsbl(zone, ip) end

---The shared store ([store]: embedded, or Redis).
---@class postern.Store
local Store = {}

---@param key string
---@return string|nil
function Store.get(key) end

---@param key string
---@param value string|number
---@param ttl? number seconds
---@return boolean
function Store.set(key, value, ttl) end

---true when the key was created, false when it existed ("first one wins").
---@param key string
---@param value string|number
---@param ttl? number seconds
---@return boolean
function Store.add(key, value, ttl) end

---The new integer; ttl applies when the key is created.
---@param key string
---@param by? integer
---@param ttl? number seconds
---@return integer
function Store.incr(key, by, ttl) end

---@param key string
---@return boolean
function Store.del(key) end

---@class postern.Util
local Util = {}

---An address object, or nil and the reason.
---@param text string
---@return postern.Address|nil
---@return string|nil reason
function Util.address(text) end

---"4.3.2.1" for "1.2.3.4", nibbles for IPv6; nil if not an address.
---@param ip string
---@return string|nil
function Util.reverse_ip(ip) end

---A compiled PCRE2 expression (postern.regex); every match runs under
---[lua] regex_match_limit, regex_depth_limit and an 8 MiB heap limit.
---@class postern.Regex
local Regex = {}

---`true` when the expression matches anywhere in `s`.
---@param s string
---@return boolean
function Regex:test(s) end

---The captures (the whole match when there are none), or nil. A group that
---took no part in the match is `false`.
---@param s string
---@param init? integer 1-based start
---@return string|false|nil ...
function Regex:match(s, init) end

---Start and end (1-based, inclusive), then the captures; or nil.
---@param s string
---@param init? integer 1-based start
---@return integer|string|false|nil ...
function Regex:find(s, init) end

---An iterator over the matches, giving each one's captures (or the whole match).
---@param s string
---@return fun(): string|false|nil, ...
function Regex:gmatch(s) end

---@class postern
---@field dns postern.Dns
---@field store postern.Store
---@field util postern.Util
---@field settings table the [lua.settings] table of the configuration
---@field api_version string "1"
postern = {}

---Compiles a PCRE2 regular expression (cached per I/O thread, JIT where it can).
---Flags: i caseless, m multi-line, s dot matches newline, x extended, u UTF-8.
---@param pattern string
---@param flags? string
---@return postern.Regex
function postern.regex(pattern, flags) end

---Registers a rule; only at a script's top level (while it loads).
---@param spec postern.RuleSpec
function postern.rule(spec) end

---Skip every later rule and filter for this transaction.
---@return postern.Verdict
function postern.accept() end

---5xx; at rcpt this recipient only. Each argument is optional.
---@param code? integer 5xx
---@param enhanced? string "5.x.y"
---@param text? string
---@return postern.Verdict
function postern.reject(code, enhanced, text) end

---4xx; at rcpt this recipient only. Each argument is optional.
---@param code? integer 4xx
---@param enhanced? string "4.x.y"
---@param text? string
---@return postern.Verdict
function postern.tempfail(code, enhanced, text) end

---250 to the client; the message is dropped.
---@param reason? string
---@return postern.Verdict
function postern.discard(reason) end

---250; the message goes to the quarantine Maildir.
---@param reason? string
---@return postern.Verdict
function postern.quarantine(reason) end

---421 and close.
---@param text? string
---@return postern.Verdict
function postern.disconnect(text) end

---Logs a line that names the rule.
---@param level "debug"|"info"|"warning"|"error"
---@param message string
function postern.log(level, message) end

---Waits without blocking the thread (tarpitting); counts against the rule's timeout.
---@param seconds number
function postern.sleep(seconds) end

postern.dns = Dns
postern.store = Store
postern.util = Util
