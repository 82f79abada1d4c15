-- rserpool_tls_sctp.lua -- ASAP and ENRP over TLS over SCTP (rsp, spec §2, §12), for
-- tshark 4.0, after rserpool_tcp.lua (whose framers it uses):
--
--   tshark -X lua_script:rserpool_tcp.lua -X lua_script:rserpool_tls_sctp.lua \
--     -o tls.keylog_file:keys.log -r capture.pcapng
--
-- - SCTP messages with PPID 11 (ASAP) and 12 (ENRP) go to the TLS dissector: tshark 4.0
--   offers no `-d sctp.ppi==11,tls` ("tls" is not in the sctp.ppi Decode As list), and
--   `-d sctp.port==P,tls` would need every port. So plain ASAP/ENRP on these PPIDs is no
--   longer decoded: load this script only for captures of TLS.
-- - The decrypted application data goes to the framers by the ALPN protocol rsp
--   negotiates (trust::ALPN_ASAP, trust::ALPN_ENRP), whatever the ports. In TLS 1.3 the
--   ALPN is in the encrypted EncryptedExtensions: it takes the key log to see it.

local ppi  = DissectorTable.get("sctp.ppi")
local tls  = Dissector.get("tls")
local alpn = DissectorTable.get("tls.alpn")

alpn:add("rserpool-asap/1", Dissector.get("asaptcp"))
alpn:add("rserpool-enrp/1", Dissector.get("enrptcp"))
ppi:add(11, tls)
ppi:add(12, tls)
