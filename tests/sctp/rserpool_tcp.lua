-- A copy of the spec's tools/rserpool_tcp.lua (shared/spec/tools), unchanged below this
-- note: tests/sctp/capture.rs loads it, then rserpool_tls_sctp.lua, to decode ASAP and ENRP
-- inside TLS over SCTP.
-- rserpool_tcp.lua -- Wireshark/tshark Lua helper for the project's
-- RSerPool-over-TCP profile (see ../rserpool-wire.md, section 12/13).
--
-- On the TCP (or decrypted TLS) byte stream, ASAP/ENRP messages are sent
-- back to back with no shim; the 16-bit Message Length at offset 2 of each
-- message delimits it.  Wireshark 4.0's own ASAP dissector on tcp.port 3863
-- does NOT reassemble or split messages, and ENRP has no TCP registration at
-- all, so this script frames the stream and hands each complete message to
-- the built-in dissectors (looked up through the SCTP PPID table, because
-- "asap" has no registered dissector name in 4.0).
--
-- Usage:
--   tshark -X lua_script:rserpool_tcp.lua -r capture.pcapng -Y "asap || enrp"
--   TLS:  add  -o tls.keylog_file:/path/to/keylog.txt  (NSS key log format,
--         e.g. rustls KeyLogFile / SSLKEYLOGFILE) -- ports 3864 and 9902.
-- Verified with TShark 4.0.17 (Debian 12), TLS 1.3.

local ppi  = DissectorTable.get("sctp.ppi")
local asap = ppi:get_dissector(11)   -- ASAP PPID
local enrp = ppi:get_dissector(12)   -- ENRP PPID

local function make(name, desc, inner)
  local p = Proto(name, desc)
  local function msg_len(tvb, pinfo, offset)
    local len = tvb(offset + 2, 2):uint()
    if len < 4 then len = 4 end       -- never let a bogus length stall framing
    return len
  end
  local function one(tvb, pinfo, tree)
    inner:call(tvb, pinfo, tree)
    return tvb:len()
  end
  function p.dissector(tvb, pinfo, tree)
    dissect_tcp_pdus(tvb, tree, 4, msg_len, one, true)
    return tvb:len()
  end
  return p
end

local asap_tcp = make("asaptcp", "ASAP over TCP (framed)", asap)
local enrp_tcp = make("enrptcp", "ENRP over TCP (framed)", enrp)

-- Plain TCP (test builds only): ASAP 3863 (IANA asap-tcp), ENRP 9901 (project choice)
local tcp_port = DissectorTable.get("tcp.port")
tcp_port:add(3863, asap_tcp)
tcp_port:add(9901, enrp_tcp)

-- TLS: ASAP 3864 (IANA asap-tcp-tls), ENRP 9902 (project choice; IANA 9902 is SCTP-only)
local tls_port = DissectorTable.get("tls.port")
tls_port:add(3864, asap_tcp)
tls_port:add(9902, enrp_tcp)
