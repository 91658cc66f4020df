package dataplane

import (
	"errors"
	"net/netip"
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendJSON appends r as encoding/json would encode it (json.Marshal: the
// same field names, order, omitempty rules and string escaping, HTML
// characters included), without a newline. The flow-log writer calls it
// once per record: encoding/json's reflection cost ~5 % of the daemon's CPU
// in a connection load, and this allocates nothing. TestRecordAppendJSON
// and FuzzRecordAppendJSON hold it to encoding/json byte for byte.
//
// Like encoding/json it fails, appending nothing, for a time that RFC 3339
// cannot write (a year outside 0–9999, a zone offset of 24 hours or more).
func (r *Record) AppendJSON(dst []byte) ([]byte, error) {
	n0 := len(dst)
	var err error
	dst = append(dst, `{"time":`...)
	if dst, err = appendJSONTime(dst, r.Time); err != nil {
		return dst[:n0], err
	}
	dst = append(dst, `,"end":`...)
	dst = appendJSONString(dst, string(r.End))
	dst = append(dst, `,"endTime":`...)
	if dst, err = appendJSONTime(dst, r.EndTime); err != nil {
		return dst[:n0], err
	}
	dst = append(dst, `,"proto":`...)
	dst = appendJSONString(dst, r.Proto.String())
	dst = append(dst, `,"client":`...)
	dst = appendJSONAddrPort(dst, r.Client)
	dst = append(dst, `,"server":`...)
	dst = appendJSONAddrPort(dst, r.Server)
	if len(r.VLAN) > 0 {
		dst = append(dst, `,"vlan":[`...)
		for i, v := range r.VLAN {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = strconv.AppendUint(dst, uint64(v), 10)
		}
		dst = append(dst, ']')
	}
	dst = append(dst, `,"direction":`...)
	dst = appendJSONString(dst, r.Direction)

	dst = append(dst, `,"local":{"id":`...)
	dst = appendJSONString(dst, r.Local.ID)
	if r.Local.Node != "" {
		dst = append(dst, `,"node":`...)
		dst = appendJSONString(dst, r.Local.Node)
	}
	dst = appendJSONTags(dst, r.Local.Tags)
	dst = append(dst, `},"remote":{"ip":`...)
	dst = appendJSONAddr(dst, r.Remote.IP)
	dst = append(dst, `,"external":`...)
	dst = strconv.AppendBool(dst, r.Remote.External)
	if r.Remote.Node != "" {
		dst = append(dst, `,"node":`...)
		dst = appendJSONString(dst, r.Remote.Node)
	}
	dst = appendJSONTags(dst, r.Remote.Tags)
	dst = append(dst, '}')

	dst = append(dst, `,"action":`...)
	dst = appendJSONString(dst, r.Action)
	dst = append(dst, `,"reason":`...)
	dst = appendJSONString(dst, r.Reason)
	if r.Rule != nil {
		dst = append(dst, `,"rule":`...)
		dst = r.Rule.appendJSON(dst)
	}
	if r.Observed != nil {
		dst = append(dst, `,"observed":`...)
		dst = r.Observed.appendJSON(dst)
	}
	dst = append(dst, `,"packetsOut":`...)
	dst = strconv.AppendUint(dst, r.PacketsOut, 10)
	dst = append(dst, `,"packetsIn":`...)
	dst = strconv.AppendUint(dst, r.PacketsIn, 10)
	dst = append(dst, `,"bytesOut":`...)
	dst = strconv.AppendUint(dst, r.BytesOut, 10)
	dst = append(dst, `,"bytesIn":`...)
	dst = strconv.AppendUint(dst, r.BytesIn, 10)
	if r.KernelCounted {
		dst = append(dst, `,"kernelCounted":true`...)
	}
	if r.MidStream {
		dst = append(dst, `,"midStream":true`...)
	}
	if r.Restored {
		dst = append(dst, `,"restored":true`...)
	}
	if r.Count != 0 {
		dst = append(dst, `,"count":`...)
		dst = strconv.AppendUint(dst, r.Count, 10)
	}
	return append(dst, '}'), nil
}

func (ri *RuleInfo) appendJSON(dst []byte) []byte {
	dst = append(dst, `{"policy":`...)
	dst = appendJSONString(dst, ri.Policy)
	dst = append(dst, `,"direction":`...)
	dst = appendJSONString(dst, ri.Direction)
	dst = append(dst, `,"index":`...)
	dst = strconv.AppendInt(dst, int64(ri.Index), 10)
	if ri.Name != "" {
		dst = append(dst, `,"name":`...)
		dst = appendJSONString(dst, ri.Name)
	}
	dst = append(dst, `,"action":`...)
	dst = appendJSONString(dst, ri.Action)
	return append(dst, '}')
}

// appendJSONTags appends `,"tags":[...]` unless tags is empty (omitempty).
func appendJSONTags(dst []byte, tags []string) []byte {
	if len(tags) == 0 {
		return dst
	}
	dst = append(dst, `,"tags":[`...)
	for i, t := range tags {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, t)
	}
	return append(dst, ']')
}

var errJSONTime = errors.New("dataplane: record time cannot be written as RFC 3339")

// appendJSONTime appends t as time.Time.MarshalJSON does: RFC 3339 with
// nanoseconds, quoted (the characters need no escaping).
func appendJSONTime(dst []byte, t time.Time) ([]byte, error) {
	dst = append(dst, '"')
	dst, err := t.AppendText(dst)
	if err != nil {
		return dst, errJSONTime
	}
	return append(dst, '"'), nil
}

// appendJSONAddrPort appends the quoted text form of ap (MarshalText; ""
// for the zero AddrPort).
func appendJSONAddrPort(dst []byte, ap netip.AddrPort) []byte {
	if ap.Addr().Zone() != "" {
		// A zone is free text: escape it (never in a flow key).
		return appendJSONString(dst, ap.String())
	}
	dst = append(dst, '"')
	dst, _ = ap.AppendText(dst) // digits, hex, '.', ':', '[', ']' only
	return append(dst, '"')
}

// appendJSONAddr appends the quoted text form of a (MarshalText; "" for the
// zero Addr).
func appendJSONAddr(dst []byte, a netip.Addr) []byte {
	if a.Zone() != "" {
		return appendJSONString(dst, a.String())
	}
	dst = append(dst, '"')
	dst, _ = a.AppendText(dst)
	return append(dst, '"')
}

// appendJSONString appends s as a JSON string the way encoding/json does
// with HTML escaping on (its default): '"', '\\', control characters, '<',
// '>' and '&' escaped, invalid UTF-8 replaced by \ufffd, U+2028 and U+2029
// escaped.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if jsonSafe[b] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default: // other control characters, '<', '>', '&'
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case c == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case c == '\u2028' || c == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[c&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// jsonSafe marks the ASCII bytes a JSON string holds as they are (with HTML
// escaping): printable, but not '"', '\\', '<', '>' or '&'.
var jsonSafe = func() (t [utf8.RuneSelf]bool) {
	for b := 0x20; b < utf8.RuneSelf; b++ {
		t[b] = true
	}
	for _, b := range `"\<>&` {
		t[b] = false
	}
	return t
}()
