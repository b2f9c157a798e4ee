package notify

import "testing"

// TestNotifier ensures a notify closes every channel handed out before
// it, and none handed out after it.
func TestNotifier(t *testing.T) {
	var n Notifier
	a, b := n.Wait(), n.Wait()
	n.Notify()
	for _, ch := range []<-chan struct{}{a, b} {
		select {
		case <-ch:
		default:
			t.Fatal("a channel from before Notify is open")
		}
	}
	c := n.Wait()
	select {
	case <-c:
		t.Fatal("a channel from after Notify is closed")
	default:
	}
	n.Notify()
	<-c
	n.Notify() // with no waiter: nothing to close, no panic
}
