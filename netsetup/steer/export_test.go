package steer

// Test hooks for the external tests of this package.

// SetTxnSocketBuffer forces the socket buffer of the Steerer's transaction
// socket (before its first use): a small one refuses big transactions
// (EMSGSIZE), which Apply must then split.
func SetTxnSocketBuffer(s *Steerer, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tw.close()
	s.tw.sockBuf = n
}

// TxnStats returns the number of transactions committed and the current
// transaction budget in bytes.
func TxnStats(s *Steerer) (sent, budget int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tw.sent, s.tw.budget
}
