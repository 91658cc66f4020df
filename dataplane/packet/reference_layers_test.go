package packet

// The gopacket layers of the reference parser (reference_test.go): a
// VLAN stack and an IPv6 extension-chain walker.

import (
	"encoding/binary"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// vlanStack decodes a stack of 802.1Q / 802.1ad tags in one step, so that
// the outer and inner VLAN IDs of a QinQ frame both survive (a single
// layers.Dot1Q would be overwritten by the inner tag).
type vlanStack struct {
	layers.BaseLayer
	ids     [2]uint16
	n       int
	tooMany bool
	next    layers.EthernetType
}

func (v *vlanStack) reset() { v.ids, v.n, v.tooMany = [2]uint16{}, 0, false }

func (v *vlanStack) CanDecode() gopacket.LayerClass { return layers.LayerTypeDot1Q }

func (v *vlanStack) NextLayerType() gopacket.LayerType {
	if v.tooMany {
		return gopacket.LayerTypeZero
	}
	return v.next.LayerType()
}

func (v *vlanStack) DecodeFromBytes(data []byte, df gopacket.DecodeFeedback) error {
	i := 0
	for {
		if len(data)-i < 4 {
			df.SetTruncated()
			return errTruncated
		}
		vid := binary.BigEndian.Uint16(data[i:]) & 0x0fff
		et := layers.EthernetType(binary.BigEndian.Uint16(data[i+2:]))
		if v.n < 2 {
			v.ids[v.n] = vid
		} else {
			v.tooMany = true
		}
		v.n++
		i += 4
		if et != layers.EthernetTypeDot1Q && et != layers.EthernetTypeQinQ && et != 0x9100 {
			v.next = et
			break
		}
	}
	// A priority-only tag (VID 0) carries no VLAN: drop it from the key so a
	// VID-0 frame and an untagged one are the same flow.
	if v.ids[0] == 0 {
		v.ids[0], v.ids[1] = v.ids[1], 0
	}
	v.BaseLayer = layers.BaseLayer{Contents: data[:i], Payload: data[i:]}
	return nil
}

var layerTypeIPv6Ext = gopacket.RegisterLayerType(2753, gopacket.LayerTypeMetadata{Name: "trireme-ipv6-extensions"})

// ip6Extensions walks a chain of IPv6 extension headers (routing,
// destination options, fragment; hop-by-hop is consumed by layers.IPv6)
// without allocating, recording the fragment header's fields.
type ip6Extensions struct {
	layers.BaseLayer
	ip6     *layers.IPv6 // the header the chain follows, for the first type
	next    uint8
	frag    Fragment
	fragID  uint32
	fragOff int
	bad     bool
}

func (x *ip6Extensions) reset() {
	x.next, x.frag, x.fragID, x.fragOff, x.bad = 0, NotFragment, 0, 0, false
}

var ip6ExtClass = gopacket.NewLayerClass([]gopacket.LayerType{
	layers.LayerTypeIPv6HopByHop, layers.LayerTypeIPv6Routing,
	layers.LayerTypeIPv6Fragment, layers.LayerTypeIPv6Destination,
})

func (x *ip6Extensions) CanDecode() gopacket.LayerClass { return ip6ExtClass }

func (x *ip6Extensions) LayerType() gopacket.LayerType { return layerTypeIPv6Ext }

func (x *ip6Extensions) NextLayerType() gopacket.LayerType {
	if x.bad || x.frag != NotFragment {
		return gopacket.LayerTypeFragment
	}
	return layers.IPProtocol(x.next).LayerType()
}

// DecodeFromBytes walks the chain that follows the IPv6 header (the parser
// does not say which layer type it dispatched for, so the first header type
// is read back from the IPv6 layer).
func (x *ip6Extensions) DecodeFromBytes(data []byte, df gopacket.DecodeFeedback) error {
	hdr := uint8(x.ip6.NextHeader)
	if x.ip6.HopByHop != nil {
		hdr = uint8(x.ip6.HopByHop.NextHeader)
	}
	i := 0
	for {
		if len(data)-i < 8 {
			df.SetTruncated()
			return errTruncated
		}
		nh := data[i]
		var l int
		switch hdr {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			l = (int(data[i+1]) + 1) * 8
		case 44: // fragment
			l = 8
			off := binary.BigEndian.Uint16(data[i+2:]) >> 3
			more := data[i+3]&1 != 0
			x.fragID = binary.BigEndian.Uint32(data[i+4:])
			x.fragOff = int(off) * 8
			if off != 0 {
				x.frag = LaterFragment
			} else if more {
				x.frag = FirstFragment
			}
		default:
			x.next = hdr
			x.BaseLayer = layers.BaseLayer{Contents: data[:i], Payload: data[i:]}
			return nil
		}
		if len(data)-i < l {
			df.SetTruncated()
			return errTruncated
		}
		i += l
		hdr = nh
		if x.frag != NotFragment {
			// A fragment's transport header, if any, is read by hand: the
			// layer decoders would check lengths against the whole datagram.
			x.next = hdr
			x.BaseLayer = layers.BaseLayer{Contents: data[:i], Payload: data[i:]}
			return nil
		}
	}
}

type parseError string

func (e parseError) Error() string { return string(e) }

const errTruncated = parseError("truncated header")
