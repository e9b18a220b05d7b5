package limiter_test

import (
	"testing"

	"github.com/ftpguard/ftpguard/limiter"
	"github.com/ftpguard/ftpguard/limiter/internal/storetest"
)

func TestMemoryStoreConformance(t *testing.T) {
	storetest.Conformance(t, func(*testing.T) limiter.Store { return limiter.NewMemoryStore() })
}
