// Package steer programs the nftables netdev rules that steer a PU's
// packets into the Go dataplane: every TCP SYN and SYN-ACK, and every
// packet of a flow that is not (yet) authorized, is duplicated into a TAP
// and dropped; packets of authorized flows, ARP, on-link IPv6 neighbour
// discovery, excluded peers and packets the dataplane injected itself stay
// in the kernel. Before anything else, frames leaving a PU that name
// another sender (MAC, IP, ARP or NDP link-layer address) or come from a
// router or DHCP server are dropped and counted (rules.go, identity.go).
// See docs/steering.md for the table layout.
//
// One table per node (family netdev, TablePrefix+node) holds everything.
// Per PU there are two base chains on its host-side veth: "in_<pu>" (hook
// ingress: traffic leaving the PU, steered to the PU's TapIn) and
// "out_<pu>" (hook egress: traffic toward the PU, steered to TapOut), and
// two authorized sets "a4_<pu>" / "a6_<pu>" (concatenated 5-tuple keys,
// per-element timeouts) shared by both chains. The excluded networks are
// the node-wide interval sets "x4" and "x6".
package steer

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	mnl "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TablePrefix starts the name of every nftables table trireme creates.
const TablePrefix = "trireme_"

// DefaultMark is the packet mark (SO_MARK) of injected packets ("trir").
const DefaultMark uint32 = 0x74726972

// Config of a node's steering table.
type Config struct {
	Node  string // table name is TablePrefix + Node
	Mark  uint32 // mark of injected packets; 0: DefaultMark
	NetNS int    // fd of the network namespace to program; 0: the caller's
	// Budget bounds the packets a second each PU can make the dataplane
	// process (budget.go); zero: no bound.
	Budget Budget
}

// PU is what the steering rules of one PU need.
type PU struct {
	Name   string // [A-Za-z0-9_-], at most 64 bytes, unique on the node
	Veth   string // host-side veth: the chains hook here
	TapIn  int    // ifindex of the TAP for traffic leaving the PU
	TapOut int    // ifindex of the TAP for traffic toward the PU
	// MAC and Addrs are who the PU is on the link (see identity.go): every
	// frame leaving it must carry MAC as Ethernet (and ARP/NDP link-layer)
	// source and one of Addrs as IP source; anything else is dropped and
	// counted. Addrs are its IPv4, IPv6 global/ULA and link-local
	// addresses, with the length of their on-link prefix.
	MAC   net.HardwareAddr
	Addrs []netip.Prefix
}

// Entry is one element of an authorized set.
type Entry struct {
	Tuple   Tuple
	Timeout time.Duration // 0: none
	Expires time.Duration // time left
}

// Counters of one PU, from the kernel's named counters.
type Counters struct {
	InSteered, InAuthorized   Packets // traffic leaving the PU
	OutSteered, OutAuthorized Packets // traffic toward the PU
	// Leaving the PU, dropped by the anti-spoofing rules: frames whose
	// sender is not the PU's own (Spoofed), router advertisements,
	// redirects and DHCP server replies (RogueRouter).
	Spoofed, RogueRouter Packets
	InOverBudget         Packets // leaving the PU, dropped over its packet budget (budget.go)
}

// Packets is a packet and byte count.
type Packets struct{ Packets, Bytes uint64 }

// Errors.
var (
	ErrUnknownPU = errors.New("steer: unknown PU")
	ErrBadName   = errors.New("steer: invalid name")
)

type puSets struct {
	a4, a6         *nftables.Set // authorized flows (kept across Apply)
	o4, o6, n6, d6 *nftables.Set // the PU's identity (identity.go)
}

type puState struct {
	pu   PU
	sets puSets
}

// Steerer owns a node's steering table. Its methods are safe for
// concurrent use; kernel changes are serialised.
type Steerer struct {
	mu       sync.Mutex
	cfg      Config
	conn     *nftables.Conn
	table    *nftables.Table
	x4, x6   *nftables.Set
	pus      map[string]*puState
	excluded []netip.Prefix
	elems    elemWriter
	keyBuf   []byte
	links    *netlink.Handle // rtnetlink in the node's namespace
	broken   error           // set when a discarded batch could not be dropped
	closed   bool
}

// Open connects to nftables for the node. It changes nothing in the kernel:
// call Apply to (re)build the table.
func Open(cfg Config) (*Steerer, error) {
	if err := checkName(cfg.Node); err != nil {
		return nil, err
	}
	if cfg.Mark == 0 {
		cfg.Mark = DefaultMark
	}
	conn, err := dialNft(cfg.NetNS)
	if err != nil {
		return nil, err
	}
	var links *netlink.Handle
	if cfg.NetNS != 0 {
		links, err = netlink.NewHandleAt(netns.NsHandle(cfg.NetNS))
	} else {
		links, err = netlink.NewHandle()
	}
	if err != nil {
		conn.CloseLasting()
		return nil, fmt.Errorf("steer: rtnetlink: %w", err)
	}
	s := &Steerer{
		links: links,
		cfg:   cfg,
		conn:  conn,
		table: &nftables.Table{Name: TablePrefix + cfg.Node, Family: nftables.TableFamilyNetdev},
		pus:   map[string]*puState{},
		elems: elemWriter{table: TablePrefix + cfg.Node, netns: cfg.NetNS},
	}
	return s, nil
}

// sendBuffer is the netlink send buffer forced on our sockets: an Apply
// that carries the authorized flows over is one transaction, hence one
// sendmsg, of about 60 bytes per flow direction; the default (wmem_max,
// 208 KiB) fails with EMSGSIZE at ~1800 flows. Memory is only used while a
// message is in flight.
const sendBuffer = 64 << 20

// recvBuffer is the receive buffer forced on the same sockets:
// google/nftables asks the kernel to echo every rule it adds
// (NLM_F_ECHO) and reads the answers only after the whole batch was
// processed, so an Apply's answers (~40 KiB per PU with the anti-spoofing
// rules) all wait in the buffer; the default (rmem_default, 208 KiB)
// overflowed with ENOBUFS at 4 PUs. Memory is only used while answers wait.
const recvBuffer = 64 << 20

func forceSendBuffer(c *mnl.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr, rerr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sendBuffer)
		rerr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, recvBuffer)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("steer: SO_SNDBUFFORCE: %w", serr)
	}
	if rerr != nil {
		return fmt.Errorf("steer: SO_RCVBUFFORCE: %w", rerr)
	}
	return nil
}

func dialNft(netnsFd int) (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(forceSendBuffer)}
	if netnsFd != 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFd))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("steer: nftables: %w", err)
	}
	return conn, nil
}

// discard drops the messages queued on s.conn after a failure while
// building a batch: google/nftables has no way to empty its queue, and the
// next Flush would send them. A fresh connection forgets them.
func (s *Steerer) discard() {
	s.conn.CloseLasting()
	if c, err := dialNft(s.cfg.NetNS); err == nil {
		s.conn = c
		return
	}
	// Could not reconnect: the old queue must never be sent, so every
	// later change fails.
	s.broken = fmt.Errorf("steer: nftables connection lost after a failed batch")
}

// flush sends the queued batch, unless discard could not reconnect.
func (s *Steerer) flush() error {
	if s.broken != nil {
		return s.broken
	}
	return s.conn.Flush()
}

// TableName is the node's nftables table.
func (s *Steerer) TableName() string { return s.table.Name }

// Mark is the mark injected packets must carry (inject.New's mark).
func (s *Steerer) Mark() uint32 { return s.cfg.Mark }

// Close closes the netlink sockets. The table stays in the kernel (so that
// a daemon that stops or crashes keeps failing closed); Delete removes it.
func (s *Steerer) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.elems.close()
	s.links.Close()
	return s.conn.CloseLasting()
}

func checkName(n string) error {
	if n == "" || len(n) > 64 {
		return fmt.Errorf("%w: %q (1..64 bytes)", ErrBadName, n)
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("%w: %q", ErrBadName, n)
		}
	}
	return nil
}

func counterName(pu, dir, what string) string { return pu + "_" + dir + "_" + what }

// Apply atomically replaces everything in the node's table with the rules
// for the given PUs and excluded networks, in a single nf_tables
// transaction: the chains, counters and sets of a previous or crashed run
// that are not wanted are deleted, the chains of the wanted PUs are built
// anew. The authorized sets (and counters) of PUs present before and after
// are kept in place, elements untouched, so a restarted daemon keeps its
// established flows in the kernel. (Reading the elements out and writing
// them back is not an option: a dump of a hash set that is being resized,
// as after many inserts, returns duplicates and misses entries.)
func (s *Steerer) Apply(pus []PU, excluded []netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	for _, pu := range pus {
		if err := s.checkPU(pu); err != nil {
			return err
		}
		if seen[pu.Name] {
			return fmt.Errorf("steer: PU %q listed twice", pu.Name)
		}
		seen[pu.Name] = true
	}
	ex, err := canonical(excluded)
	if err != nil {
		return err
	}
	// What the table holds now: chains, set definitions and objects (small
	// dumps, no elements).
	keepSets := map[string]bool{}
	keepObjs := map[string]bool{}
	t := s.table
	var delChains []*nftables.Chain
	var delSets []*nftables.Set
	var delObjs []nftables.Obj
	if s.tableExists() {
		chains, err := s.conn.ListChainsOfTableFamily(t.Family)
		if err != nil {
			return fmt.Errorf("steer: list chains: %w", err)
		}
		for _, c := range chains {
			if c.Table != nil && c.Table.Name == t.Name {
				delChains = append(delChains, &nftables.Chain{Table: t, Name: c.Name})
			}
		}
		sets, err := s.conn.GetSets(t)
		if err != nil {
			return fmt.Errorf("steer: list sets: %w", err)
		}
		for _, set := range sets {
			if want, ok := wantedSet(set.Name, seen); ok && set.HasTimeout && set.Concatenation && set.KeyType.Bytes == want {
				keepSets[set.Name] = true
				continue
			}
			delSets = append(delSets, &nftables.Set{Table: t, Name: set.Name})
		}
		objs, err := s.conn.GetObjects(t)
		if err != nil {
			return fmt.Errorf("steer: list objects: %w", err)
		}
		for _, o := range objs {
			co, ok := o.(*nftables.CounterObj)
			if ok && seen[puOfCounter(co.Name)] {
				keepObjs[co.Name] = true
				continue
			}
			if ok {
				delObjs = append(delObjs, &nftables.CounterObj{Table: t, Name: co.Name})
			}
		}
	}

	s.conn.AddTable(t) // no-op if it exists
	// Chains first: deleting a chain deletes its rules, which releases the
	// sets they look up.
	for _, c := range delChains {
		s.conn.DelChain(c)
	}
	for _, set := range delSets {
		s.conn.DelSet(set)
	}
	for _, o := range delObjs {
		s.conn.DeleteObject(o)
	}
	x4, x6, err := s.addExcludedSets(ex)
	if err != nil {
		s.discard()
		return err
	}
	// The PU rules look the excluded sets up through s.x4/s.x6; restore the
	// old ones if the batch fails.
	oldX4, oldX6 := s.x4, s.x6
	s.x4, s.x6 = x4, x6
	states := map[string]*puState{}
	for _, pu := range pus {
		st, err := s.addPU(pu, keepSets, keepObjs)
		if err != nil {
			s.x4, s.x6 = oldX4, oldX6
			s.discard()
			return err
		}
		states[pu.Name] = st
	}
	if err := s.flush(); err != nil {
		s.x4, s.x6 = oldX4, oldX6
		return fmt.Errorf("steer: replace table %s: %w", t.Name, err)
	}
	s.pus = states
	s.excluded = ex
	return nil
}

// wantedSet reports whether a set of that name belongs to a wanted PU, and
// the key length it must have.
func wantedSet(name string, pus map[string]bool) (uint32, bool) {
	switch {
	case strings.HasPrefix(name, "a4_") && pus[name[3:]]:
		return key4Len, true
	case strings.HasPrefix(name, "a6_") && pus[name[3:]]:
		return key6Len, true
	}
	return 0, false
}

// puOfCounter returns the PU a counter name "<pu>_<dir>_<what>" belongs to.
func puOfCounter(name string) string {
	for _, sfx := range counterSuffixes {
		if p, ok := strings.CutSuffix(name, sfx); ok {
			return p
		}
	}
	return ""
}

func (s *Steerer) tableExists() bool {
	_, err := s.conn.ListTableOfFamily(s.table.Name, s.table.Family)
	return err == nil
}

// checkPU validates a PU and checks that its veth and TAPs exist. The
// kernel (6.18) accepts netdev chains for devices that do not exist yet and
// binds them when a device of that name appears: a typo would silently
// leave a PU unpoliced until then, so it is refused here.
func (s *Steerer) checkPU(pu PU) error {
	if err := checkName(pu.Name); err != nil {
		return err
	}
	if pu.Veth == "" || len(pu.Veth) > 15 {
		return fmt.Errorf("steer: PU %s: invalid veth name %q", pu.Name, pu.Veth)
	}
	if err := checkIdentity(pu); err != nil {
		return err
	}
	if pu.TapIn <= 0 || pu.TapOut <= 0 || pu.TapIn == pu.TapOut {
		return fmt.Errorf("steer: PU %s: two distinct TAP ifindexes needed (in %d, out %d)", pu.Name, pu.TapIn, pu.TapOut)
	}
	if _, err := s.links.LinkByName(pu.Veth); err != nil {
		return fmt.Errorf("steer: PU %s: veth %s: %w", pu.Name, pu.Veth, err)
	}
	for _, idx := range []int{pu.TapIn, pu.TapOut} {
		l, err := s.links.LinkByIndex(idx)
		if err != nil {
			return fmt.Errorf("steer: PU %s: TAP ifindex %d: %w", pu.Name, idx, err)
		}
		if l.Type() != "tuntap" {
			return fmt.Errorf("steer: PU %s: ifindex %d is a %s, not a TAP", pu.Name, idx, l.Type())
		}
	}
	return nil
}

var (
	key4Type = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeInetService)
	key6Type = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeInetService)
)

// addPU queues the sets, counters, chains and rules of one PU on s.conn.
// Sets and counters named in keepSets/keepObjs exist already and are left
// as they are.
func (s *Steerer) addPU(pu PU, keepSets, keepObjs map[string]bool) (*puState, error) {
	sets := puSets{
		a4: &nftables.Set{Table: s.table, Name: "a4_" + pu.Name, KeyType: key4Type, Concatenation: true, HasTimeout: true},
		a6: &nftables.Set{Table: s.table, Name: "a6_" + pu.Name, KeyType: key6Type, Concatenation: true, HasTimeout: true},
	}
	for _, set := range []*nftables.Set{sets.a4, sets.a6} {
		if keepSets[set.Name] {
			continue
		}
		if err := s.addSet(set, nil); err != nil {
			return nil, err
		}
	}
	if err := s.addIdentitySets(pu, &sets); err != nil {
		return nil, err
	}
	for _, name := range puCounters(pu.Name) {
		if !keepObjs[name] {
			s.conn.AddObj(&nftables.CounterObj{Table: s.table, Name: name})
		}
	}
	for _, egress := range []bool{false, true} {
		name, hook := "in_"+pu.Name, nftables.ChainHookIngress
		if egress {
			name, hook = "out_"+pu.Name, nftables.ChainHookEgress
		}
		ch := s.conn.AddChain(&nftables.Chain{
			Name:     name,
			Table:    s.table,
			Type:     nftables.ChainTypeFilter,
			Hooknum:  hook,
			Priority: nftables.ChainPriorityFilter,
			Device:   pu.Veth,
		})
		for _, r := range s.chainRules(pu, egress, sets) {
			s.conn.AddRule(&nftables.Rule{Table: s.table, Chain: ch, Exprs: r})
		}
	}
	return &puState{pu: pu, sets: sets}, nil
}

// addSet queues a set and its elements. The elements go in messages of
// maxElemsPerMsg: a netlink attribute (here the element list) cannot exceed
// 64 KiB, and google/nftables puts all elements given to AddSet in one.
func (s *Steerer) addSet(set *nftables.Set, els []nftables.SetElement) error {
	if err := s.conn.AddSet(set, nil); err != nil {
		return fmt.Errorf("steer: set %s: %w", set.Name, err)
	}
	for len(els) > 0 {
		n := min(len(els), maxElemsPerMsg)
		if err := s.conn.SetAddElements(set, els[:n]); err != nil {
			return fmt.Errorf("steer: set %s: %w", set.Name, err)
		}
		els = els[n:]
	}
	return nil
}

// AddPU adds the chains and sets of one PU (one batch). The table must have
// been created with Apply.
func (s *Steerer) AddPU(pu PU) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkPU(pu); err != nil {
		return err
	}
	if s.x4 == nil {
		return fmt.Errorf("steer: AddPU %s before Apply", pu.Name)
	}
	if _, ok := s.pus[pu.Name]; ok {
		return fmt.Errorf("steer: PU %s already present", pu.Name)
	}
	st, err := s.addPU(pu, nil, nil)
	if err != nil {
		s.discard()
		return err
	}
	if err := s.flush(); err != nil {
		return fmt.Errorf("steer: add PU %s: %w", pu.Name, err)
	}
	s.pus[pu.Name] = st
	return nil
}

// RemovePU deletes the chains, sets and counters of one PU (one batch).
func (s *Steerer) RemovePU(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.pus[name]
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownPU, name)
	}
	s.conn.DelChain(&nftables.Chain{Table: s.table, Name: "in_" + name})
	s.conn.DelChain(&nftables.Chain{Table: s.table, Name: "out_" + name})
	s.conn.DelSet(st.sets.a4)
	s.conn.DelSet(st.sets.a6)
	for _, set := range st.sets.identitySets() {
		s.conn.DelSet(set)
	}
	for _, c := range puCounters(name) {
		s.conn.DeleteObject(&nftables.CounterObj{Table: s.table, Name: c})
	}
	if err := s.flush(); err != nil {
		return fmt.Errorf("steer: remove PU %s: %w", name, err)
	}
	delete(s.pus, name)
	return nil
}

// PUs returns the names of the PUs the table steers.
func (s *Steerer) PUs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.pus))
	for n := range s.pus {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Delete removes the node's table and everything in it (graceful stop).
// Deleting a missing table is not an error.
func (s *Steerer) Delete() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conn.AddTable(s.table)
	s.conn.DelTable(s.table)
	if err := s.flush(); err != nil {
		return fmt.Errorf("steer: delete table %s: %w", s.table.Name, err)
	}
	s.pus = map[string]*puState{}
	s.x4, s.x6 = nil, nil
	return nil
}

// DeleteStaleTables removes every netdev table whose name starts with
// TablePrefix except keep ("" removes all): leftovers of crashed runs or
// renamed nodes in this namespace. It returns the names removed. It
// assumes one trireme node per network namespace: a second daemon running
// in the same namespace would lose its table.
func DeleteStaleTables(netnsFd int, keep string) ([]string, error) {
	opts := []nftables.ConnOption{}
	if netnsFd != 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFd))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("steer: nftables: %w", err)
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyNetdev)
	if err != nil {
		return nil, fmt.Errorf("steer: list tables: %w", err)
	}
	var removed []string
	for _, t := range tables {
		if strings.HasPrefix(t.Name, TablePrefix) && t.Name != keep {
			conn.DelTable(t)
			removed = append(removed, t.Name)
		}
	}
	if err := conn.Flush(); err != nil {
		return nil, fmt.Errorf("steer: delete stale tables %v: %w", removed, err)
	}
	return removed, nil
}

// Counters reads the kernel counters of one PU.
func (s *Steerer) Counters(pu string) (Counters, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.pus[pu]; !ok {
		return Counters{}, fmt.Errorf("%w: %s", ErrUnknownPU, pu)
	}
	objs, err := s.conn.GetObj(&nftables.CounterObj{Table: s.table})
	if err != nil {
		return Counters{}, fmt.Errorf("steer: counters: %w", err)
	}
	var c Counters
	dst := map[string]*Packets{
		counterName(pu, "in", "steer"):  &c.InSteered,
		counterName(pu, "in", "auth"):   &c.InAuthorized,
		counterName(pu, "out", "steer"): &c.OutSteered,
		counterName(pu, "out", "auth"):  &c.OutAuthorized,
		counterName(pu, "in", "spoof"):  &c.Spoofed,
		counterName(pu, "in", "rogue"):  &c.RogueRouter,
		budgetCounter(pu):               &c.InOverBudget,
	}
	for _, o := range objs {
		co, ok := o.(*nftables.CounterObj)
		if !ok || co.Table == nil || co.Table.Name != s.table.Name {
			continue
		}
		if p := dst[co.Name]; p != nil {
			*p = Packets{Packets: co.Packets, Bytes: co.Bytes}
		}
	}
	return c, nil
}
