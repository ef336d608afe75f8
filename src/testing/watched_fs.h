#pragma once
// WatchedAppendFs: a RocksDB FileSystem (over the default one) that runs a check before every
// append to the files it watches, so a test can slow, stop or fail writes: the base of the small
// disk (small_disk.h) and of the slow flash tier (slow_fs.h). Use with rocksdb::NewCompositeEnv.

#include <rocksdb/env.h>  // rocksdb::NewCompositeEnv, for users
#include <rocksdb/file_system.h>

#include <memory>
#include <string>

namespace kvtier::testing {

class WatchedAppendFs : public rocksdb::FileSystemWrapper {
 public:
  WatchedAppendFs() : rocksdb::FileSystemWrapper(rocksdb::FileSystem::Default()) {}

  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* d) override {
    std::unique_ptr<rocksdb::FSWritableFile> file;
    rocksdb::IOStatus s = target()->NewWritableFile(f, o, &file, d);
    if (s.ok()) *r = Wrap(f, std::move(file));
    return s;
  }
  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                       rocksdb::IODebugContext* d) override {
    std::unique_ptr<rocksdb::FSWritableFile> file;
    rocksdb::IOStatus s = target()->ReopenWritableFile(f, o, &file, d);
    if (s.ok()) *r = Wrap(f, std::move(file));
    return s;
  }

 protected:
  // Whether appends to `path` are checked. Default: every file.
  virtual bool Watches(const std::string& /*path*/) const { return true; }
  // Runs on the appending thread before `bytes` are appended to `path`; an error fails the
  // append, and nothing is written.
  virtual rocksdb::IOStatus BeforeAppend(const std::string& path, size_t bytes) = 0;

 private:
  class File : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    File(std::unique_ptr<rocksdb::FSWritableFile> f, WatchedAppendFs* fs, std::string path)
        : rocksdb::FSWritableFileOwnerWrapper(std::move(f)), fs_(fs), path_(std::move(path)) {}
    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                             rocksdb::IODebugContext* d) override {
      rocksdb::IOStatus s = fs_->BeforeAppend(path_, data.size());
      return s.ok() ? target()->Append(data, o, d) : s;
    }
    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                             const rocksdb::DataVerificationInfo& v,
                             rocksdb::IODebugContext* d) override {
      rocksdb::IOStatus s = fs_->BeforeAppend(path_, data.size());
      return s.ok() ? target()->Append(data, o, v, d) : s;
    }
    rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                       const rocksdb::IOOptions& o,
                                       rocksdb::IODebugContext* d) override {
      rocksdb::IOStatus s = fs_->BeforeAppend(path_, data.size());
      return s.ok() ? target()->PositionedAppend(data, offset, o, d) : s;
    }

   private:
    WatchedAppendFs* fs_;
    std::string path_;
  };

  std::unique_ptr<rocksdb::FSWritableFile> Wrap(const std::string& path,
                                                std::unique_ptr<rocksdb::FSWritableFile> file) {
    if (!Watches(path)) return file;
    return std::make_unique<File>(std::move(file), this, path);
  }
};

}  // namespace kvtier::testing
