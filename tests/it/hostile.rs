//! Storage that lies: oversized objects of every kind, forged leases, junk
//! and damaged key files. Each fails with a clear error, in bounded memory,
//! and hides nothing real.
