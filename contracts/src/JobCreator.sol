// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {JobMarket} from "./JobMarket.sol";
import {ILilypadJobClient} from "./ILilypadJobClient.sol";

/// @title JobCreator
/// @notice Lets a contract ask for a job: `runJob` takes the job's cost from the caller and emits
///         `JobRequested`; the off-chain bridge turns it into a JobOffer (signed by the bridge, valid
///         for this contract through ERC-1271), and once the deal's result is in, calls
///         `deliverResult`, which accepts it in JobMarket and calls the client back. Only the bridge
///         may deliver or cancel.
contract JobCreator is Ownable2Step, IERC1271 {
    using SafeERC20 for IERC20;

    struct Job {
        address client; // receives submitResults
        address payee; // receives what is left of the job's funds (refund or change)
        uint96 amount; // what the client paid; held in this contract's JobMarket balance
        bool open;
    }

    IERC20 public immutable token;
    JobMarket public immutable market;
    address public bridge;
    uint96 public jobCost;
    uint256 public jobCount;
    mapping(uint256 jobId => Job) public jobs;

    event JobRequested(
        uint256 indexed jobId, address indexed client, address indexed payee, string module, string[] inputs, uint256 amount
    );
    event JobDelivered(uint256 indexed jobId, bytes32 indexed dealId, bytes resultCid);
    event JobCancelled(uint256 indexed jobId, uint256 refund);
    event BridgeSet(address indexed bridge);
    event JobCostSet(uint96 jobCost);

    error NotBridge(address caller);
    error JobNotOpen(uint256 jobId);
    error NotOurDeal(address jobCreator);
    error PriceAboveJobFunds(uint256 price, uint256 funds);
    error ResultMismatch(bytes32 dealId);

    constructor(address owner_, JobMarket market_, address bridge_, uint96 jobCost_) Ownable(owner_) {
        market = market_;
        token = market_.token();
        bridge = bridge_;
        jobCost = jobCost_;
        token.forceApprove(address(market_), type(uint256).max);
    }

    modifier onlyBridge() {
        if (msg.sender != bridge) revert NotBridge(msg.sender);
        _;
    }

    function setBridge(address bridge_) external onlyOwner {
        bridge = bridge_;
        emit BridgeSet(bridge_);
    }

    function setJobCost(uint96 jobCost_) external onlyOwner {
        jobCost = jobCost_;
        emit JobCostSet(jobCost_);
    }

    /// @notice Ask for `module` to run with `inputs` ("Key=Value" tunables). The caller pays
    ///         `jobCost` (approve this contract first) and receives `submitResults`; `payee` gets
    ///         whatever of the cost a cheaper deal or a failed job leaves.
    function runJob(string calldata module, string[] calldata inputs, address payee) external returns (uint256 jobId) {
        uint96 amount = jobCost;
        jobId = ++jobCount;
        jobs[jobId] = Job(msg.sender, payee, amount, true);
        emit JobRequested(jobId, msg.sender, payee, module, inputs, amount);
        token.safeTransferFrom(msg.sender, address(this), amount);
        market.deposit(amount);
    }

    /// @notice Bridge only: accept the deal's result in JobMarket, refund the change to the payee
    ///         and hand the CID to the client.
    function deliverResult(uint256 jobId, JobMarket.Deal calldata deal, bytes calldata resultCid) external onlyBridge {
        Job memory job = _close(jobId);
        if (deal.jobCreator != address(this)) revert NotOurDeal(deal.jobCreator);
        if (deal.price > job.amount) revert PriceAboveJobFunds(deal.price, job.amount);
        bytes32 dealId = keccak256(abi.encode(deal));
        (, , bytes24 tag) = market.dealState(dealId);
        // The CID handed to the client must be the one the provider submitted.
        if (tag != bytes24(keccak256(resultCid))) revert ResultMismatch(dealId);
        market.acceptResult(deal);
        uint256 change = job.amount - deal.price;
        if (change > 0) {
            market.withdraw(change);
            token.safeTransfer(job.payee, change);
        }
        emit JobDelivered(jobId, dealId, resultCid);
        ILilypadJobClient(job.client).submitResults(jobId, dealId, resultCid);
    }

    /// @notice Bridge only: give up on a job (no deal, or its deal was refunded) and return its funds
    ///         to the payee.
    function cancelJob(uint256 jobId) external onlyBridge {
        Job memory job = _close(jobId);
        market.withdraw(job.amount);
        emit JobCancelled(jobId, job.amount);
        token.safeTransfer(job.payee, job.amount);
    }

    /// @notice ERC-1271: a JobOffer naming this contract is valid when the bridge signed it.
    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(hash, signature);
        if (err == ECDSA.RecoverError.NoError && recovered == bridge) return IERC1271.isValidSignature.selector;
        return bytes4(0xffffffff);
    }

    function _close(uint256 jobId) internal returns (Job memory job) {
        job = jobs[jobId];
        if (!job.open) revert JobNotOpen(jobId);
        jobs[jobId].open = false;
    }
}
